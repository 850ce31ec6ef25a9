"""LoRA under DDP on CPU: two processes (gloo) under torchrun, as tests/test_ddp.py does for full fine-tuning.

    python -m pytest tests/test_lora_ddp.py -q

LoRA SFT with 2 ranks x 4 examples ends where one process ends with the same 8 examples a step as 2 x 4
micro-batches (only the adapters are synchronised: the frozen trunk has no gradient), and LoRA PPO's ranks, which
sample different prompts, end with identical policies (finish_distributed's checksum over every weight of the
policy, adapters included).
"""

import os

import torch

import train_sft
from minirlhf.checkpoint import load_checkpoint, save_checkpoint
from minirlhf.data import write_jsonl
from minirlhf.lab.make_data import make_data
from minirlhf.model import GPT, GPTConfig, ScalarGPT
from minirlhf.tokenizer import get_tokenizer
from minirlhf.training import parse_args
from test_ddp import torchrun

LORA = ["--lora_rank", "4", "--lora_alpha", "8"]


def test_lora_sft_and_ppo_under_ddp(tmp_path):
    d = str(tmp_path)
    for name, rows in make_data(seed=0, n_sft=96, n_train_per_family=4, n_eval_per_family=1).items():
        write_jsonl(f"{d}/{name}.jsonl", rows)
    torch.manual_seed(0)
    base = GPT(GPTConfig.preset("tiny", vocab_size=get_tokenizer("lab").vocab_size, block_size=96))
    save_checkpoint(f"{d}/base.pt", base, stage="sft", tokenizer_name="lab")
    sft = lambda out: ["--train_data", f"{d}/sft.jsonl", "--out_dir", out, "--init_from", f"{d}/base.pt",  # noqa: E731
                       "--batch_size", "8", "--micro_batch_size", "4", "--max_steps", "3", "--lr", "1e-2",
                       "--log_interval", "1", *LORA]
    assert "ranks in sync: 2 ranks" in torchrun("train_sft.py", sft(f"{d}/sft_ddp"))
    train_sft.main(parse_args(train_sft.Args, sft(f"{d}/sft_single")))
    ddp, single = (load_checkpoint(f"{d}/{x}/ckpt.pt") for x in ("sft_ddp", "sft_single"))
    assert set(single["model"]) == {k for k in single["model"] if "lora_" in k} and single["lora"]["rank"] == 4
    moved = [k for k, v in single["model"].items() if k.endswith("lora_B") and v.abs().sum() > 0]
    assert moved  # the adapters trained
    for key in single["model"]:  # equal up to the order of floating-point sums
        assert torch.allclose(ddp["model"][key], single["model"][key], atol=1e-5, rtol=1e-4), key

    save_checkpoint(f"{d}/rm.pt", ScalarGPT.from_gpt(base), stage="rm", tokenizer_name="lab", normalised=True)
    stdout = torchrun("train_ppo.py", [
        "--prompts", f"{d}/prompts_train.jsonl", "--eval_prompts", "", "--sft_ckpt", f"{d}/sft_single/ckpt.pt",
        "--rm_ckpt", f"{d}/rm.pt", "--out_dir", f"{d}/ppo", "--num_iters", "2", "--batch_size", "8",
        "--num_minibatches", "2", "--micro_batch_size", "2", "--ppo_epochs", "2", "--max_new_tokens", "6",
        "--log_samples", "0", "--lr", "1e-3", *LORA])
    assert "ranks in sync: 2 ranks" in stdout  # finish_distributed's checksum over every weight, adapters included
    ckpt = load_checkpoint(f"{d}/ppo/ckpt.pt")
    assert ckpt["step"] == 2 and ckpt["lora"]["base"] == f"{d}/sft_single/ckpt.pt"
    assert any(k.startswith("trunk.") and "lora_" in k for k in ckpt["value_model"])
    assert os.path.getsize(f"{d}/ppo/ckpt.pt") < os.path.getsize(f"{d}/base.pt")  # adapters, not the trunks
