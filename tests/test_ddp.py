"""DDP on CPU: two processes (gloo) under torchrun, every DDP run of this file in one torchrun (tests/ddp_worker.py).

    python -m pytest tests/test_ddp.py -q

- SFT with 2 ranks x 4 examples must end where one process ends with the same 8 examples per step as 2 x 4
  micro-batches (DDP averages gradients over ranks exactly as accumulation sums them over micro-batches); LoRA
  SFT too (only the adapters are synchronised: the frozen trunk has no gradient).
- PPO's ranks, which sample different prompts, must keep identical weights (finish_distributed's checksum over
  every weight of the policy), full and LoRA (adapters included).
- PPO's loss under DDP is the mean over all ranks' valid tokens: on fixed rollouts of very different lengths, the
  gradient DDP averages over 2 ranks is the gradient of one process holding both ranks' rollouts.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import train_sft
from ddp_worker import fixed_rollout_gradients
from minirlhf.checkpoint import load_checkpoint, save_checkpoint
from minirlhf.data import write_jsonl
from minirlhf.lab.make_data import make_data
from minirlhf.model import GPT, GPTConfig, ScalarGPT
from minirlhf.tokenizer import get_tokenizer
from minirlhf.training import parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LORA = ["--lora_rank", "4", "--lora_alpha", "8"]


def sft_flags(d, out):
    return ["--train_data", f"{d}/sft.jsonl", "--out_dir", out, "--init_from", "scratch:tiny", "--block_size", "96",
            "--batch_size", "8", "--micro_batch_size", "4", "--max_steps", "4", "--log_interval", "1"]


def lora_sft_flags(d, out):
    return ["--train_data", f"{d}/sft.jsonl", "--out_dir", out, "--init_from", f"{d}/base.pt", "--batch_size", "8",
            "--micro_batch_size", "4", "--max_steps", "3", "--lr", "1e-2", "--log_interval", "1", *LORA]


def ppo_flags(d, sft, out, micro_batch_size):
    return ["--prompts", f"{d}/prompts_train.jsonl", "--eval_prompts", "", "--sft_ckpt", sft, "--rm_ckpt",
            f"{d}/rm.pt", "--out_dir", out, "--num_iters", "2", "--batch_size", "8", "--num_minibatches", "2",
            "--micro_batch_size", str(micro_batch_size), "--ppo_epochs", "2", "--max_new_tokens", "6",
            "--log_samples", "0"]


def start_torchrun(jobs, d):
    with open(f"{d}/jobs.json", "w") as f:
        json.dump(jobs, f)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "ddp_worker.py"), f"{d}/jobs.json"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny lab data and models; one torchrun of every DDP job, and meanwhile the single-process references.
    -> (folder, {job: its stdout on rank 0}, the one-process gradients on the fixed rollouts)"""
    d = tmp_path_factory.mktemp("ddp")
    for name, rows in make_data(seed=0, n_sft=96, n_train_per_family=4, n_eval_per_family=1).items():
        write_jsonl(str(d / f"{name}.jsonl"), rows)
    write_jsonl(str(d / "one_prompt.jsonl"), [{"prompt": "Human: What is 2 + 3?\n\nAssistant:"}] * 4)
    tok = get_tokenizer("lab")
    torch.manual_seed(0)
    base = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size, block_size=96))
    save_checkpoint(f"{d}/base.pt", base, stage="sft", tokenizer_name="lab")
    save_checkpoint(f"{d}/rm.pt", ScalarGPT.from_gpt(base), stage="rm", tokenizer_name="lab", normalised=True)
    torch.manual_seed(1)
    responses = torch.randint(0, tok.eot_token, (8, 6))
    for row, n in enumerate([6, 6, 5, 6, 1, 2, 1, 3]):  # rank 0 holds 23 valid tokens, rank 1 holds 7
        if n < 6:
            responses[row, n - 1], responses[row, n:] = tok.eot_token, tok.pad_token
    torch.save(responses, d / "responses.pt")
    proc = start_torchrun([  # PPO starts from the SFT runs just before it
        ["sft", "train_sft.py", sft_flags(d, f"{d}/sft_ddp")],
        ["lora_sft", "train_sft.py", lora_sft_flags(d, f"{d}/lora_sft_ddp")],
        ["ppo", "train_ppo.py", ppo_flags(d, f"{d}/sft_ddp/ckpt.pt", f"{d}/ppo", 1)],
        ["lora_ppo", "train_ppo.py", ppo_flags(d, f"{d}/lora_sft_ddp/ckpt.pt", f"{d}/lora_ppo", 2)
         + ["--lr", "1e-3", *LORA]],
        ["fixed_rollouts", "fixed_rollouts", [str(d), f"{d}/fixed_ddp"]]], d)
    train_sft.main(parse_args(train_sft.Args, sft_flags(d, f"{d}/sft_single")))
    train_sft.main(parse_args(train_sft.Args, lora_sft_flags(d, f"{d}/lora_sft_single")))
    fixed_single = fixed_rollout_gradients(str(d), f"{d}/fixed_single")  # one process, all 8 rollouts
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout[-2000:] + stderr[-4000:]
    sections = stdout.split("### ")[1:]  # rank 0 opens each job's output with "### name"
    return d, dict(section.split("\n", 1) for section in sections), fixed_single


def test_ddp_sft_equals_single_process_with_accumulation(runs):
    d, stdout, _ = runs
    assert "ranks in sync: 2 ranks" in stdout["sft"]
    ddp = load_checkpoint(f"{d}/sft_ddp/ckpt.pt")["model"]
    single = load_checkpoint(f"{d}/sft_single/ckpt.pt")["model"]
    for key in single:  # equal up to the order of floating-point sums
        assert torch.allclose(ddp[key], single[key], atol=1e-5, rtol=1e-4), key


def test_ddp_ppo_ranks_stay_in_sync(runs):
    d, stdout, _ = runs
    assert "ranks in sync: 2 ranks" in stdout["ppo"]
    assert load_checkpoint(f"{d}/ppo/ckpt.pt")["step"] == 2


def test_lora_sft_and_ppo_under_ddp(runs):
    d, stdout, _ = runs
    assert "ranks in sync: 2 ranks" in stdout["lora_sft"]
    ddp, single = (load_checkpoint(f"{d}/{x}/ckpt.pt") for x in ("lora_sft_ddp", "lora_sft_single"))
    assert set(single["model"]) == {k for k in single["model"] if "lora_" in k} and single["lora"]["rank"] == 4
    moved = [k for k, v in single["model"].items() if k.endswith("lora_B") and v.abs().sum() > 0]
    assert moved  # the adapters trained
    for key in single["model"]:  # equal up to the order of floating-point sums
        assert torch.allclose(ddp["model"][key], single["model"][key], atol=1e-5, rtol=1e-4), key

    assert "ranks in sync: 2 ranks" in stdout["lora_ppo"]  # the checksum is over every weight, adapters included
    ckpt = load_checkpoint(f"{d}/lora_ppo/ckpt.pt")
    assert ckpt["step"] == 2 and ckpt["lora"]["base"] == f"{d}/lora_sft_ddp/ckpt.pt"
    assert any(k.startswith("trunk.") and "lora_" in k for k in ckpt["value_model"])
    assert os.path.getsize(f"{d}/lora_ppo/ckpt.pt") < os.path.getsize(f"{d}/base.pt")  # adapters, not the trunks


def test_ddp_ppo_loss_is_the_mean_over_all_ranks_valid_tokens(runs):
    d, _, single = runs
    ddp = torch.load(d / "fixed_ddp" / "grads.pt")
    assert len(single) == len(ddp) == 2  # policy, value model
    for one, two in zip(single, ddp):
        for a, b in zip(one, two):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), (a - b).abs().max()
    assert load_checkpoint(str(d / "fixed_ddp" / "ckpt.pt"))["step"] == 1
