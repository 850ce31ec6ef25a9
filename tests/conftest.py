"""Shared pytest setup.

TRITON_INTERPRET=1 must be set before triton is imported anywhere, so that the kernel tests can run the
real Triton kernels on CPU tensors (inside `kernels.triton_on_cpu()`). It changes nothing else: without
that context manager CPU tensors take the plain PyTorch reference path.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

# Small, deterministic, and not competing with itself for the 2 cores of a CI machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
