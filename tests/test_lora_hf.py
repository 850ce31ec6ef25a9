"""The runs/ LoRA walkthrough's first stages on a GPT-2-shaped Hugging Face folder, offline, on CPU: SFT with LoRA
(and LoRA dropout) from the folder, the adapters' base being the folder; the reward model with LoRA from that SFT
checkpoint, merged on load (its recorded base hash is the merged SFT trunk's); each checkpoint holds adapters (and
the head) only; the merged plain checkpoint equals what load_model gives; a base folder whose weights changed is
refused. (PPO with LoRA from such checkpoints: tests/test_lora_scripts.py.)

    python -m pytest tests/test_lora_hf.py -q
"""

import json

import pytest
import torch

import train_rm
import train_sft
from minirlhf import lora
from minirlhf.checkpoint import CheckpointError, load_checkpoint, load_model, merge_checkpoint
from minirlhf.data import write_jsonl
from minirlhf.model import GPT, GPTConfig
from minirlhf.training import parse_args

LORA = ["--lora_rank", "4", "--lora_alpha", "8"]
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # stored (in, out)


def gpt2_folder(path, seed):
    """A random GPT-2-shaped Hugging Face folder (config.json + model.safetensors, Conv1D weights transposed)."""
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=50257, block_size=64))
    state = {k: (v.t() if k.endswith(CONV1D) else v).contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    path.mkdir()
    save_file(state, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(dict(n_positions=64, vocab_size=50257, n_layer=2, n_head=2, n_embd=32)))
    return str(path)


def test_lora_walkthrough_from_a_gpt2_folder(tmp_path):
    folder, d = gpt2_folder(tmp_path / "gpt2-tiny", 0), str(tmp_path)
    words = ["Hello there.", "The sky is blue.", "Two plus two is four.", "Paris is in France."]
    write_jsonl(f"{d}/sft.jsonl", [{"prompt": f"Human: say {w}\n\nAssistant:", "response": " " + w} for w in words])
    write_jsonl(f"{d}/prefs.jsonl", [{"prompt": f"Human: say {w}\n\nAssistant:", "chosen": " " + w, "rejected": " No."}
                                     for w in words * 2])
    small = ["--batch_size", "4", "--micro_batch_size", "2", "--max_steps", "2", "--warmup_steps", "1", *LORA]
    train_sft.main(parse_args(train_sft.Args, small + [
        "--tokenizer", "gpt2", "--init_from", folder, "--train_data", f"{d}/sft.jsonl", "--eval_data", "",
        "--out_dir", f"{d}/sft", "--lr", "1e-2", "--lora_dropout", "0.1"]))
    sft = load_checkpoint(f"{tmp_path}/sft/ckpt.pt")
    assert sft["lora"]["base"] == folder and all("lora_" in k for k in sft["model"])
    train_rm.main(parse_args(train_rm.Args, small + [
        "--sft_ckpt", f"{d}/sft/ckpt.pt", "--train_data", f"{d}/prefs.jsonl", "--eval_data", "", "--eval_fraction",
        "0", "--out_dir", f"{d}/rm", "--norm_samples", "4", "--max_new_tokens", "4"]))
    rm = load_checkpoint(f"{tmp_path}/rm/ckpt.pt", expect="scalar")
    assert rm["normalised"] and {"score.weight", "score.bias"} <= set(rm["model"])
    assert rm["lora"]["base_sha256"] == lora.trunk_sha256(load_model(f"{tmp_path}/sft/ckpt.pt")[0])  # merged SFT
    merge_checkpoint(f"{tmp_path}/rm/ckpt.pt", f"{tmp_path}/merged.pt")
    tokens = torch.randint(50000, (2, 12))
    want = load_model(f"{tmp_path}/rm/ckpt.pt")[0](tokens)
    merged = load_checkpoint(f"{tmp_path}/merged.pt")
    assert "lora" not in merged and merged["normalised"] and torch.equal(load_model(f"{tmp_path}/merged.pt")[0](tokens), want)
    sft["lora"]["base"] = gpt2_folder(tmp_path / "other", 1)  # other weights: the adapters are refused there
    torch.save(sft, tmp_path / "moved.pt")
    with pytest.raises(CheckpointError, match="refusing"):
        load_model(str(tmp_path / "moved.pt"))
