"""The plumbing every training script shares, word for word: options from a dataclass, devices and DDP,
seeding, CPU threads, logging, and checkpoints that can be resumed. The RLHF core (log-probs, scores) is in
minirlhf/scoring.py.

The algorithms themselves (SFT, reward model, PPO, DPO) live in the top-level scripts, in plain sight.
"""

import argparse
import dataclasses
import gc
import json
import math
import os
import random
import sys
import time
from contextlib import ExitStack, nullcontext

import numpy as np
import torch
import torch.distributed as dist

from minirlhf import lora
from minirlhf.checkpoint import load_checkpoint, load_model, non_finite_entries, save_checkpoint
from minirlhf.files import describe, truncate_lines
from minirlhf.flags import number, split_batch  # noqa: F401 (split_batch: the scripts' one micro-batch check)
from minirlhf.model import GPT, GPTConfig
from minirlhf.tokenizer import get_tokenizer

# ----------------------------------------------------------------------------- options


def parse_args(cls, argv=None):
    """An argparse parser built from a dataclass: one --flag per field, its help text from metadata["help"].

    Also reads @file arguments (one flag per line) so runs can be kept as flag files under runs/.
    A field's range (opt's ge / gt / le / lt) and choices are checked by argparse, then the dataclass's own
    check(world_size) (checks between flags), if it has one, and check_out_dir: a bad flag stops here, named,
    before any work.
    """
    parser = argparse.ArgumentParser(description=sys.modules[cls.__module__].__doc__, fromfile_prefix_chars="@",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.convert_arg_line_to_args = lambda line: line.split("#")[0].split()  # comments and "--flag value" lines
    for f in dataclasses.fields(cls):
        help_text = f"{f.metadata.get('help', '')} (default: {f.default!r})"
        if f.type in (bool, "bool"):
            parser.add_argument(f"--{f.name}", type=_to_bool, default=f.default, metavar="BOOL", help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            bounds = f.metadata.get("bounds", {})
            parser.add_argument(f"--{f.name}", type=number(kind, **bounds) if kind in (int, float) else kind,
                                default=f.default, choices=f.metadata.get("choices"), help=help_text)
    args = cls(**vars(parser.parse_args(argv)))
    try:
        if hasattr(args, "check"):
            args.check(int(os.environ.get("WORLD_SIZE", 1)))
        if hasattr(args, "overwrite"):
            check_out_dir(args.out_dir, args.resume, args.overwrite)
    except (ValueError, FileExistsError) as e:
        parser.error(str(e))
    return args


def _to_bool(s):
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def opt(default, help, choices=None, **bounds):
    """A dataclass field with a help text (shown by --help), and optionally its range (ge=, gt=, le=, lt=: the
    value must be >=, >, <=, < that) or its choices, checked when the flags are parsed (minirlhf.flags)."""
    return dataclasses.field(default=default, metadata={"help": help, "bounds": bounds, "choices": choices})


# ----------------------------------------------------------------------------- devices, DDP, seeds


@dataclasses.dataclass
class Runtime:
    rank: int
    world_size: int
    device: str
    master: bool  # rank 0 writes checkpoints and logs

    def autocast(self, dtype):
        """bf16 autocast on GPU when asked for; fp32 everywhere else (CPU bf16 is slow and not what we test).

        MINIRLHF_CPU_AUTOCAST=1 in the environment turns bf16 autocast on for CPU too: a test uses it so that
        dtype mismatches a GPU run would meet show up on a CPU first (tests/test_bf16_autocast_cpu.py).
        """
        if dtype == "bfloat16" and self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        if dtype == "bfloat16" and os.environ.get("MINIRLHF_CPU_AUTOCAST") == "1" and self.device == "cpu":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()


def setup_runtime(device="auto"):
    """Single process, or one process per rank under torchrun (RANK / WORLD_SIZE set): gloo on CPU, nccl on GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if device.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", 0))
            device = f"cuda:{local}"
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        return Runtime(rank, world, device, rank == 0)
    return Runtime(0, 1, device, True)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_generator(seed, step, rank=0, device="cpu", stream=0):
    """A generator seeded from (seed, step, rank, stream): what a step samples depends on nothing else, so a
    resumed run draws exactly what an uninterrupted one would, and each DDP rank draws differently. Two jobs of
    one step (e.g. PPO's prompt picks and its sampler) take different `stream`s, so they never share numbers."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + step * 7919 + rank * 104_729 + stream * 15_485_863)
    return g


def set_cpu_threads(num_params, requested=0):
    """Choose torch's CPU thread count from the model's size and, for the lab's models, the cores free now.

    Models under SMALL_MODEL (the lab's) take the cores idle when the stage starts, at most SMALL_MODEL_THREADS
    (their matmuls are small, so more threads mostly add waiting): two on a quiet 2-core machine, one beside a
    busy core. Following the load is safe because their digits do not depend on the count: matmuls run in MKL's
    strict reproducible mode (minirlhf/__init__.py) and model.LayerNorm sums its gradients the same way on any
    number of threads, so a lab run gives the same checkpoints and report on one thread as on two
    (tests/test_threads.py). Where torch has no MKL (ARM builds use other BLAS libraries, whose sums split with
    the threads), and for bigger models (not checked that way), the count is fixed by the machine instead: the
    cores this process may run on.

    Why follow the load: threads wait for each other at the end of every op. On free cores a waiting thread spins
    and the work splits evenly; when another process holds one of two cores, a second thread shares a core with
    it and the first waits for it at every op, so one thread alone does as well (docs/speed.md: the quick start
    beside a busy core). `requested` > 0 (the --threads flag) or OMP_NUM_THREADS in the environment overrides the
    choice. On GPU the count only affects host work.
    """
    if requested > 0:
        n = requested
    elif os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    else:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        if num_params < SMALL_MODEL:
            n = min(free_cores(cores) if torch.backends.mkl.is_available() else len(cores), SMALL_MODEL_THREADS)
        else:
            n = len(cores)
    torch.set_num_threads(n)
    return n


def free_cores(cores, window=0.1):
    """How many of these CPUs sat idle over the next `window` seconds (at least 1); all of them where Linux's
    /proc/stat is not there to say."""
    try:
        before = cpu_ticks(cores)
        time.sleep(window)
        after = cpu_ticks(cores)
    except OSError:
        return len(cores)
    idle = sum((after[c][0] - before[c][0]) / max(1, after[c][1] - before[c][1]) for c in before)
    return max(1, min(len(cores), round(idle)))


def cpu_ticks(cores, stat="/proc/stat"):
    """{cpu number: (idle ticks, all ticks)} since boot, for these CPUs, as Linux counts them in /proc/stat
    (a line `cpuN user nice system idle iowait irq softirq steal ...`; idle here is idle + iowait)."""
    ticks = {}
    with open(stat) as f:
        for line in f:
            name, *counts = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
                counts = [int(c) for c in counts[:8]]
                ticks[int(name[3:])] = (counts[3] + counts[4], sum(counts))
    return ticks


SMALL_MODEL = 20_000_000  # parameters; the lab's models (1M) are far below, GPT-2 124M far above
SMALL_MODEL_THREADS = 2  # the lab's models gain from a second thread (more are unmeasured: 2-core machines)


def cosine_lr(step, max_steps, lr, warmup):
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))  # decay to 10 % of lr


def all_reduce_sum(x, rt):
    """Sum a float over ranks (token counts, loss sums, metrics)."""
    if rt.world_size == 1:
        return float(x)
    t = torch.tensor(float(x), dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return t.item()


def all_reduce_mean(x, rt):
    return all_reduce_sum(x, rt) / rt.world_size


def accumulation_context(rt, ddp_models, last, dtype):
    """The context of one micro-batch's forward and backward: the autocast and, on every micro-batch of a
    minibatch but its last, DDP's no_sync() on each DDP-wrapped model. Gradients then accumulate locally and are
    all-reduced once, on the last micro-batch (each DDP model needs its own no_sync; without DDP it is a no-op)."""
    stack = ExitStack()
    if rt.world_size > 1 and not last:
        for model in ddp_models:
            stack.enter_context(model.no_sync())
    stack.enter_context(rt.autocast(dtype))
    return stack


def finish_distributed(model, rt):
    """End of a DDP run: verify that every rank holds the same weights (a cheap checksum), then tear down.

    The caller first drops its DDP wrappers: each holds the process group, and a group still held after
    destroy_process_group is destroyed whenever its last holder goes (at interpreter exit if a reference cycle
    holds it), where gloo's threads can abort a run that went well ("terminate called without an active exception").
    """
    if rt.world_size == 1:
        return
    checksum = torch.tensor([sum(p.double().sum().item() for p in model.parameters())], device=rt.device)
    gathered = [torch.zeros_like(checksum) for _ in range(rt.world_size)]
    dist.all_gather(gathered, checksum)
    values = [g.item() for g in gathered]
    if max(values) != min(values):
        raise RuntimeError(f"ranks out of sync: weight checksums {values}")
    if rt.master:
        print(f"ranks in sync: {rt.world_size} ranks, weight checksum {values[0]:.10g}")
    gc.collect()  # whatever still holds the group through a reference cycle goes now, not at exit
    dist.barrier()  # no rank tears its communicator down while another still uses it
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- models in, checkpoints out


def init_policy(init_from, tokenizer_name, block_size, device):
    """A GPT for SFT: 'scratch:PRESET' (e.g. scratch:small), a Hugging Face GPT-2 folder or hub name, or one of
    our checkpoints. Returns (model, tokenizer)."""
    tok = get_tokenizer(tokenizer_name)
    if init_from.startswith("scratch:"):
        model = GPT(GPTConfig.preset(init_from.split(":", 1)[1], vocab_size=tok.vocab_size, block_size=block_size))
    elif init_from.endswith(".pt"):
        model, ckpt_tok, _ = load_model(init_from, expect="gpt")
        if ckpt_tok.name != tok.name:
            raise ValueError(f"{init_from} was trained with tokenizer {ckpt_tok.name!r}, not {tok.name!r}")
    else:
        model = GPT.from_pretrained(init_from, vocab_size=tok.vocab_size)
    if model.config.vocab_size < tok.vocab_size:
        raise ValueError(f"model vocabulary {model.config.vocab_size} < tokenizer's {tok.vocab_size}")
    return model.to(device).train(), tok


def adamw(model, lr, weight_decay=0.0):
    """AdamW with weight decay on matrices only (not biases, LayerNorm gains), fused into one kernel per step."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)


def resume_path(out_dir):
    return os.path.join(out_dir, "ckpt.pt")


def training_state(optimizer, **extra):
    """What a checkpoint needs beyond the weights to continue exactly where it stopped."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # numpy's array as a tensor: plain data to load
    return dict(optimizer=optimizer.state_dict(), torch_rng=torch.get_rng_state(), python_rng=random.getstate(),
                numpy_rng=(kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss), **extra)


def restore_training_state(ckpt, optimizer):
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["torch_rng"])
    random.setstate(ckpt["python_rng"])
    kind, keys, *rest = ckpt["numpy_rng"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    return ckpt["step"]


def load_resume(out_dir, expect="gpt"):
    """The checkpoint to resume from. log.jsonl is cut back to its step: the lines a killed run logged after its
    last checkpoint are logged again by the resumed run, and would otherwise be there twice."""
    path = resume_path(out_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"--resume given but {path} does not exist")
    ckpt = load_checkpoint(path, expect=expect)
    if int(os.environ.get("RANK", 0)) == 0:
        truncate_lines(os.path.join(out_dir, "log.jsonl"), lambda line: _logged_step(line) <= ckpt["step"])
    return ckpt


def resume_run(rt, out_dir, model, optimizer, **state):
    """--resume: the model, its optimizer and the RNGs from out_dir/ckpt.pt, and each extra module or optimizer
    from the state dict saved under its keyword (e.g. value_model=...). Returns the checkpoint (step, ...)."""
    ckpt = load_resume(out_dir)
    lora.load_trained_state_dict(model, ckpt["model"])  # the whole state; under LoRA adapters and heads alone
    for key, obj in state.items():
        if isinstance(obj, torch.nn.Module):  # a value model: as the model above
            lora.load_trained_state_dict(obj, ckpt[key])
        else:
            obj.load_state_dict(ckpt[key])
    restore_training_state(ckpt, optimizer)
    if rt.master:
        print(f"resumed from {resume_path(out_dir)} at step {ckpt['step']}")
    return ckpt


def check_finite(value, name, step, out_dir):
    """Stop on NaN / inf before it reaches the weights; the last checkpoint on disk stays the last good one
    (save_checkpoint also refuses to save non-finite weights, so the checkpoint on disk is always good).
    `value` is a float, or a model whose weights are checked (after an optimizer step)."""
    if isinstance(value, torch.nn.Module):
        bad = non_finite_entries(value.state_dict())
        value = float("nan") if bad else 0.0
        name = f"{name} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
    if not math.isfinite(value):
        raise FloatingPointError(f"{name} is {value} at step {step}: stopping. The last good checkpoint is "
                                 f"{resume_path(out_dir)} (if one was written); lower the learning rate and --resume.")


def check_out_dir(out_dir, resume, overwrite):
    """A fresh run into an out_dir holding a checkpoint is refused unless --overwrite true: it would replace that
    run's checkpoint and, at its first log line, its log. (Resuming: see load_resume.)"""
    if not resume and not overwrite and os.path.exists(resume_path(out_dir)):
        raise FileExistsError(f"--out_dir {out_dir} already holds a run ({resume_path(out_dir)}); use --resume "
                              f"true to continue it, --overwrite true to replace it, or another --out_dir")


def _logged_step(line):
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a damaged line ends the log there


class Logger:
    """One '|'-separated line per step on stdout, the same as a JSON object per line in out_dir/log.jsonl,
    and optionally wandb."""

    def __init__(self, out_dir, enabled, wandb_project="", run_config=None, resume=False):
        self.enabled = enabled
        self.path = os.path.join(out_dir, "log.jsonl")
        self.t0 = time.time()
        self.wandb = None
        # A fresh run replaces log.jsonl at its first line, not before: a run that stops on bad input first loses
        # nothing (and check_out_dir, run by parse_args, has refused to start over a run not to be replaced).
        self.mode = "a" if resume else "w"
        if enabled:
            os.makedirs(out_dir, exist_ok=True)
            if wandb_project:
                import wandb
                self.wandb = wandb.init(project=wandb_project, config=run_config)

    def log(self, step, metrics, line_keys):
        if not self.enabled:
            return
        metrics = {"step": step, "time/elapsed": round(time.time() - self.t0, 2), **metrics}
        with open(self.path, self.mode) as f:
            f.write(json.dumps(metrics) + "\n")
        self.mode = "a"
        parts = [f"step {step}"] + [f"{k} {_fmt(metrics[k])}" for k in line_keys if k in metrics]
        print(" | ".join(parts), flush=True)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def samples(self, prompts, texts, scores, n):
        """Print the first n (prompt, response, score) of a batch under its log line: what the policy now says."""
        if self.enabled:
            for prompt, text, score in list(zip(prompts, texts, scores))[:n]:
                print(f"    {describe(prompt, 200)} -> {text!r}  (score {score:+.2f})")


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def save_training_checkpoint(rt, out_dir, model, *, stage, tokenizer_name, step, args, optimizer, **extra):
    if rt.master:
        save_checkpoint(resume_path(out_dir), model, stage=stage, tokenizer_name=tokenizer_name, step=step,
                        config=dataclasses.asdict(args), **training_state(optimizer), **extra)
