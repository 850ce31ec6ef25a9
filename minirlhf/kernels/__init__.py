"""Triton kernels for the log-probabilities RLHF computes, each with its plain PyTorch reference.

    logprobs(logits, targets, temperature=1.0, return_entropy=False)   log p(target) [and entropy]
    full_kl(logits, ref_logits, temperature=1.0)                       exact KL(p || p_ref) per token
    linear_logprobs(hidden, weight, targets, temperature=1.0)          log p(target), logits never stored

All take any leading shape, accept fp32/fp16/bf16 and return fp32; the *_reference functions have the
same signatures. CUDA tensors use the Triton kernels; CPU tensors use the references, or the kernels
(in Triton's interpreter, TRITON_INTERPRET=1) inside `with kernels.triton_on_cpu():`.
`kernels.stats` counts kernel launches by name.
"""
from ._dispatch import HAS_TRITON, INTERPRET, stats, triton_on_cpu
from .kl import full_kl, full_kl_reference
from .linear_logprobs import linear_logprobs, linear_logprobs_reference
from .logprobs import logprobs, logprobs_reference

__all__ = [
    "logprobs", "logprobs_reference", "full_kl", "full_kl_reference",
    "linear_logprobs", "linear_logprobs_reference", "triton_on_cpu", "stats", "HAS_TRITON", "INTERPRET",
]
