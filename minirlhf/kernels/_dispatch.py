"""When the Triton kernels run, when the PyTorch references run, and a counter that proves which did.

The rule:
- CUDA tensors (fp32, fp16, bf16) go through Triton whenever triton imports (and TRITON_INTERPRET is
  not set: interpreting kernels on GPU tensors would only be slow).
- CPU tensors go through the plain PyTorch reference, except inside `with triton_on_cpu():`, where they
  go through the same Triton kernels run by Triton's interpreter (tests use this; it needs
  TRITON_INTERPRET=1 in the environment before this package is imported, because `triton.jit` reads it
  when the kernels are defined).
- No triton at all (macOS, Windows): the reference, silently. The kernel modules still import, because
  `triton.jit` is replaced by a stand-in that leaves the functions undecorated and never launched.

`stats` counts kernel launches by name, e.g. stats["logprobs_fwd"], so a test can prove a kernel ran.
"""
import contextlib
import os
import types
from collections import Counter

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # a stand-in so that `@triton.jit` and `x: tl.constexpr` still parse
    triton = types.SimpleNamespace(jit=lambda fn: fn)
    tl = types.SimpleNamespace(constexpr=None)
    HAS_TRITON = False

# read once, as triton.jit does when it decorates the kernels (at import of this package)
INTERPRET = HAS_TRITON and os.environ.get("TRITON_INTERPRET", "0") == "1"
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

stats = Counter()  # kernel name -> number of launches
_triton_on_cpu = False


@contextlib.contextmanager
def triton_on_cpu():
    """Run the Triton kernels (in Triton's interpreter) for CPU tensors inside this block."""
    global _triton_on_cpu
    if not INTERPRET:
        raise RuntimeError("triton_on_cpu() needs triton installed and TRITON_INTERPRET=1 set "
                           "before `minirlhf.kernels` (or triton) is imported")
    previous, _triton_on_cpu = _triton_on_cpu, True
    try:
        yield
    finally:
        _triton_on_cpu = previous


def use_triton(x):
    """True if the Triton path should handle tensor `x` (see the rule at the top)."""
    if not HAS_TRITON or x.dtype not in KERNEL_DTYPES:
        return False
    if x.is_cuda:  # compiled kernels; under the interpreter (a CPU test setting) the reference
        return not INTERPRET
    return _triton_on_cpu and x.device.type == "cpu"


def launch(name, kernel, grid, *args, **kwargs):
    """kernel[grid](*args, **kwargs), counted in `stats`."""
    stats[name] += 1
    kernel[grid](*args, **kwargs)


def rows_of(x):
    """View x[..., V] as [N, V] with unit stride along V (a copy only if it must)."""
    x = x.reshape(-1, x.shape[-1])
    return x if x.stride(-1) == 1 else x.contiguous()
