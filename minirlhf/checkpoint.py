"""Checkpoints: one dict per file, written atomically, checked when read.

    {"format": "minirlhf", "model_type": "gpt" | "scalar", "model_args": GPTConfig fields, "model": state dict,
     "tokenizer": "gpt2" | "lab" | path, "stage": "sft" | "rm" | "ppo" | "dpo" | ..., "step": int, ...extras}

Training scripts add their own extras (optimizer state, RNG state, run config, reward normalisation, ...).
Written to a temporary file in the same folder and renamed over the target (minirlhf.files.atomic_write): the
rename is atomic, so a run killed mid-save leaves the previous checkpoint whole, never half a file.

Three promises, kept here for every stage at once:
- nothing non-finite is saved: a NaN or inf in the weights, the optimizer state or any saved tensor stops the
  save with an error, so "the last checkpoint" is always a good one;
- loading runs no code: torch.load(weights_only=True) unpickles only tensors and plain Python values (a crafted
  .pt cannot run a command), plus the few numpy types of the RNG state in checkpoints written before it was
  stored as plain values;
- the tokenizer travels with the model: its name, the sha256 of its vocabulary, and for a custom .tiktoken
  file the file's text itself (minirlhf.tokenizer.tokenizer_record), so a later stage rebuilds exactly it.
"""

import math
import os

import numpy as np
import torch

from minirlhf.files import atomic_write
from minirlhf.model import GPT, GPTConfig, ScalarGPT
from minirlhf.tokenizer import tokenizer_from_record, tokenizer_record


class CheckpointError(ValueError):
    pass


def atomic_save(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def non_finite_entries(obj, prefix=""):
    """Names of the floating-point tensors (and floats) in a nested dict / list that hold a NaN or inf."""
    if isinstance(obj, torch.Tensor):
        return [prefix] if obj.is_floating_point() and not torch.isfinite(obj).all() else []
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [prefix]
    if isinstance(obj, dict):
        return [n for k, v in obj.items() for n in non_finite_entries(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, (list, tuple)):
        return [n for i, v in enumerate(obj) for n in non_finite_entries(v, f"{prefix}[{i}]")]
    return []


def save_checkpoint(path, model, *, stage, tokenizer_name, step=0, **extra):
    """Save `model` (a GPT or ScalarGPT, possibly DDP-wrapped) with what is needed to rebuild it."""
    model = getattr(model, "module", model)  # unwrap DDP
    ckpt = {
        "format": "minirlhf",
        "model_type": "scalar" if isinstance(model, ScalarGPT) else "gpt",
        "model_args": model.model_args(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **tokenizer_record(tokenizer_name),
        "stage": stage,
        "step": step,
        **extra,
    }
    bad = non_finite_entries({k: v for k, v in ckpt.items() if k != "config"})
    if bad:
        raise FloatingPointError(f"{path}: not saved, {len(bad)} entries hold NaN or inf ({', '.join(bad[:4])}"
                                 f"{', ...' if len(bad) > 4 else ''}); the file on disk, if any, is the last good one")
    atomic_save(ckpt, path)


def load_checkpoint(path, expect=None):
    """Read a checkpoint dict; `expect` ('gpt' or 'scalar') checks it holds that kind of model."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(_OLD_NUMPY_RNG):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file at all, or holding objects that are not plain data
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{path}: not a readable checkpoint; only tensors and plain values are loaded "
                              f"({type(e).__name__}: {first[:300]})") from None
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
    try:
        tok = tokenizer_from_record(ckpt)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return model.to(device).eval(), tok, ckpt


# Checkpoints written before the numpy RNG state was stored as plain values hold a numpy array: allow exactly the
# types that rebuild an array (no callable that could run code).
_OLD_NUMPY_RNG = [np.ndarray, np.dtype, type(np.dtype(np.uint32)),
                  getattr(np, "_core", getattr(np, "core", None)).multiarray._reconstruct]
