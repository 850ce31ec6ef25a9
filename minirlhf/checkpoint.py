"""Checkpoints: one dict per file, written atomically, checked when read.

    {"format": "minirlhf", "model_type": "gpt" | "scalar", "model_args": GPTConfig fields, "model": state dict,
     "tokenizer": "gpt2" | "lab" | path, "stage": "sft" | "rm" | "ppo" | "dpo" | ..., "step": int, ...extras}

Training scripts add their own extras (optimizer state, RNG state, run config, reward normalisation, ...).
Written to a temporary file in the same folder and renamed over the target: the rename is atomic, so a run
killed mid-save leaves the previous checkpoint whole, never half a file.
"""

import os

import torch

from minirlhf.model import GPT, GPTConfig, ScalarGPT
from minirlhf.tokenizer import get_tokenizer


class CheckpointError(ValueError):
    pass


def atomic_save(obj, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    os.replace(tmp, path)


def save_checkpoint(path, model, *, stage, tokenizer_name, step=0, **extra):
    """Save `model` (a GPT or ScalarGPT, possibly DDP-wrapped) with what is needed to rebuild it."""
    model = getattr(model, "module", model)  # unwrap DDP
    ckpt = {
        "format": "minirlhf",
        "model_type": "scalar" if isinstance(model, ScalarGPT) else "gpt",
        "model_args": model.model_args(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "tokenizer": tokenizer_name,
        "stage": stage,
        "step": step,
        **extra,
    }
    atomic_save(ckpt, path)


def load_checkpoint(path, expect=None):
    """Read a checkpoint dict; `expect` ('gpt' or 'scalar') checks it holds that kind of model."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or not a torch file at all
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "minirlhf":
        raise CheckpointError(f"{path}: not a minirlhf checkpoint (no 'format': 'minirlhf' entry)")
    if expect is not None and ckpt["model_type"] != expect:
        wanted = {"gpt": "a language model (SFT/PPO/DPO policy)", "scalar": "a reward or value model"}
        raise CheckpointError(
            f"{path}: this is a {ckpt['model_type']!r} checkpoint written by stage {ckpt['stage']!r}, "
            f"but {wanted[expect]} was expected here")
    return ckpt


def load_model(path, expect=None, device="cpu"):
    """(model in eval mode, tokenizer, checkpoint dict) from a checkpoint file."""
    ckpt = load_checkpoint(path, expect)
    cls = ScalarGPT if ckpt["model_type"] == "scalar" else GPT
    model = cls(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), get_tokenizer(ckpt["tokenizer"]), ckpt
