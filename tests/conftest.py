"""Shared pytest setup.

Without a GPU, TRITON_INTERPRET=1 is set before triton is imported anywhere, so that the kernel tests run the
real Triton kernels on CPU tensors (inside `kernels.triton_on_cpu()`). It changes nothing else: without that
context manager CPU tensors take the plain PyTorch reference path. With a GPU the kernels are compiled and the
GPU tests run instead.
"""

import os

# Before torch loads OpenMP: waiting threads sleep rather than spin, so a test (or the subprocess it starts)
# does not stall when another process holds a core (see minirlhf/stages.py). It changes no number.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Small, deterministic, and not competing with itself for the 2 cores of a CI machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
