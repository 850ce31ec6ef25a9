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

A LoRA model (minirlhf/lora.py) is saved small: "model" holds its adapters and fully trained heads only, and
"lora" its rank, alpha, targets, the base checkpoint's path and the sha256 of the base trunk's weights.
load_model rebuilds the base, refuses it if its trunk's hash differs, and merges: every reader (sample.py, the
lab's evaluation, the export) gets a plain model. merge_checkpoint writes that plain model to a file.
"""

import math
import os

import numpy as np
import torch

from minirlhf import lora
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
        "model": {k: v.detach().cpu() for k, v in lora.trained_state_dict(model).items()},
        **({"lora": dict(model.lora_config)} if lora.is_lora(model) else {}),
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
    if "lora" in ckpt:
        model = _merged_lora_model(path, ckpt)
    else:
        cls = ScalarGPT if ckpt["model_type"] == "scalar" else GPT
        model = cls(GPTConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
    try:
        tok = tokenizer_from_record(ckpt)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return model.to(device).eval(), tok, ckpt


def lora_base_model(path, ckpt):
    """The base a LoRA checkpoint's adapters belong to, with fresh adapters of the same shape on it (B = 0).

    The base is read from the path the checkpoint names (a checkpoint, merged first if it is LoRA itself, or a
    Hugging Face GPT-2 folder); a GPT base becomes a ScalarGPT for a reward/value model's adapters. Its trunk's
    sha256 must equal the one recorded at training time: adapters on another trunk would be silently wrong."""
    cfg = ckpt["lora"]
    base = cfg.get("base")
    if not base:
        raise CheckpointError(f"{path}: LoRA checkpoint with no base recorded; its adapters cannot be placed")
    if str(base).endswith(".pt"):
        model = load_model(base)[0]
    else:
        model = GPT.from_pretrained(base, vocab_size=ckpt["model_args"]["vocab_size"])
    if ckpt["model_type"] == "scalar" and not isinstance(model, ScalarGPT):
        model = ScalarGPT.from_gpt(model)
    found = lora.trunk_sha256(model)
    if found != cfg["base_sha256"]:
        raise CheckpointError(f"{path}: its adapters belong to a base {base} whose trunk had sha256 "
                              f"{cfg['base_sha256'][:16]}..., but {base} now holds a trunk with sha256 {found[:16]}...: "
                              "refusing to put them on other weights (was the base retrained or replaced?)")
    return lora.add_lora(model, cfg["rank"], cfg["alpha"], cfg["targets"], cfg.get("dropout", 0.0),
                         cfg.get("trained", ()), rl=False, base=base)


def _merged_lora_model(path, ckpt):
    model = lora_base_model(path, ckpt)
    try:
        lora.load_trained_state_dict(model, ckpt["model"])
    except KeyError as e:
        raise CheckpointError(f"{path}: the adapters do not fit their base: {e}") from None
    return lora.merge(model)


def merge_checkpoint(src, dst):
    """A LoRA checkpoint -> a plain checkpoint (the base's weights + (alpha / r) B A), readable without the base.
    Training state that only fits the adapters (optimizers, PPO's value adapters) is left out."""
    model, _, ckpt = load_model(src)
    if "lora" not in ckpt:
        raise CheckpointError(f"{src}: not a LoRA checkpoint; it is plain already")
    skip = {"format", "model_type", "model_args", "model", "lora", "tokenizer", "stage", "step",
            "optimizer", "value_model", "value_optimizer"}
    extra = {k: v for k, v in ckpt.items() if k not in skip and not k.startswith("tokenizer")}
    save_checkpoint(dst, model, stage=ckpt["stage"], tokenizer_name=tokenizer_from_record(ckpt).name,
                    step=ckpt["step"], merged_from=dict(path=src, **{k: v for k, v in ckpt["lora"].items()}), **extra)


# Checkpoints written before the numpy RNG state was stored as plain values hold a numpy array: allow exactly the
# types that rebuild an array (no callable that could run code).
_OLD_NUMPY_RNG = [np.ndarray, np.dtype, type(np.dtype(np.uint32)),
                  getattr(np, "_core", getattr(np, "core", None)).multiarray._reconstruct]
