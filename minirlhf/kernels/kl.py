"""Exact KL(p || p_ref) over the whole vocabulary, per token, in one streaming pass over both rows.

PPO and DPO-style objectives keep the policy near a reference model. The usual per-token estimate
uses only the sampled token (log p_y - log p_ref_y); the exact KL sums over every column:

    logp = torch.log_softmax(logits / T, -1); logq = torch.log_softmax(ref_logits / T, -1)
    kl = (logp.exp() * (logp - logq)).sum(-1)

Naively that reads both [N, V] logit tensors, writes two [N, V] fp32 log_softmaxes, an [N, V] exp and
an [N, V] product, then reads them back; the backward writes and reads as many again. The floor is one
read of each input forward (2 N V elements) and, backward, a second read of both plus one write of the
gradient (3 N V). The kernel below meets it: per row it keeps five numbers while it walks the columns.

The math, for one row: a = logits / T, b = ref_logits / T, p = softmax(a), q = softmax(b), d = a - b,
    KL = sum_j p_j (log p_j - log q_j) = E_p[d] - logsumexp(a) + logsumexp(b)
    dKL / dz_j = p_j (log p_j - log q_j - KL) / T = p_j (d_j - E_p[d]) / T
(the constants cancel: log p_j - log q_j - KL = d_j - E_p[d]). Streaming, one block at a time:
    1. online logsumexp of a: running max m_a, sum s_a = sum_j exp(a_j - m_a), rescaled by
       alpha = exp(m_a - m_a') whenever the max grows to m_a'; likewise m_b, s_b for b.
    2. u = sum_j exp(a_j - m_a) d_j, rescaled by the same alpha, so E_p[d] = u / s_a.
    3. KL = u / s_a + (m_b - m_a) + log s_b - log s_a. For p = q every term is computed twice by the
       same operations in the same order, so KL(p, p) is exactly 0.
ref_logits is a constant: no gradient flows to it.
"""
import torch

from ._dispatch import launch, rows_of, tl, triton, use_triton


def full_kl_reference(logits, ref_logits, temperature=1.0):
    """KL(softmax(logits / T) || softmax(ref_logits / T)) per position, in plain PyTorch.

    logits, ref_logits [..., V] -> [...] fp32 (fp64 if given fp64). Gradient to logits only.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    a = logits.to(dtype) / temperature
    b = ref_logits.detach().to(dtype) / temperature
    logp = torch.log_softmax(a, dim=-1)  # [..., V]
    logq = torch.log_softmax(b, dim=-1)  # [..., V]
    p = logp.exp()
    # columns with p_j = 0 add 0 (and pass no NaN back), even where both are -inf
    diff = (logp - logq).masked_fill(p == 0, 0.0)
    return (p * diff).sum(-1)


@triton.jit
def _kl_fwd_kernel(
    logits_ptr, ref_ptr, kl_ptr,  # in: [N, V], [N, V]; out: [N]
    max_ptr, log_sum_ptr, mean_ptr,  # saved for backward, [N] each: m_a, log s_a, E_p[d]
    V, stride_row, stride_ref_row, temperature,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64 offsets: N * V passes 2^31 on real shapes
    a_ptr = logits_ptr + row * stride_row
    b_ptr = ref_ptr + row * stride_ref_row
    m_a = -1e38  # finite: exp(m - m') is 0, not NaN, while a row's blocks are all -inf
    s_a = 0.0
    m_b = -1e38
    s_b = 0.0
    u = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        a = tl.load(a_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32) / temperature
        b = tl.load(b_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32) / temperature
        # 1. online logsumexp of a and of b
        m_a_new = tl.maximum(m_a, tl.max(a, axis=0))
        alpha = tl.exp(m_a - m_a_new)
        e_a = tl.exp(a - m_a_new)  # [BLOCK_V], 0 where a = -inf
        s_a = s_a * alpha + tl.sum(e_a, axis=0)
        m_b_new = tl.maximum(m_b, tl.max(b, axis=0))
        s_b = s_b * tl.exp(m_b - m_b_new) + tl.sum(tl.exp(b - m_b_new), axis=0)
        # 2. u = sum exp(a - m_a) (a - b); columns with p_j = 0 add nothing (-inf - -inf is NaN)
        u = u * alpha + tl.sum(tl.where(e_a > 0.0, e_a * (a - b), 0.0), axis=0)
        m_a = m_a_new
        m_b = m_b_new

    # 3. KL = E_p[d] - logsumexp(a) + logsumexp(b)
    mean = u / s_a
    log_s_a = tl.log(s_a)
    tl.store(kl_ptr + row, mean + (m_b - m_a) + (tl.log(s_b) - log_s_a))
    tl.store(max_ptr + row, m_a)
    tl.store(log_sum_ptr + row, log_s_a)
    tl.store(mean_ptr + row, mean)


@triton.jit
def _kl_bwd_kernel(
    logits_ptr, ref_ptr, grad_kl_ptr,  # [N, V], [N, V], [N]
    max_ptr, log_sum_ptr, mean_ptr,  # saved by the forward, [N] each
    grad_logits_ptr,  # out: [N, V], the dtype of the logits
    V, stride_row, stride_ref_row, stride_grad_row, temperature,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    a_ptr = logits_ptr + row * stride_row
    b_ptr = ref_ptr + row * stride_ref_row
    g = tl.load(grad_kl_ptr + row)
    m_a = tl.load(max_ptr + row)
    log_s_a = tl.load(log_sum_ptr + row)
    mean = tl.load(mean_ptr + row)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        a = tl.load(a_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32) / temperature
        b = tl.load(b_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32) / temperature
        p = tl.exp((a - m_a) - log_s_a)
        # dKL / dz_j = p_j (d_j - E_p[d]) / T
        grad = g * tl.where(p > 0.0, p * ((a - b) - mean), 0.0) / temperature
        tl.store(grad_logits_ptr + row * stride_grad_row + cols,
                 grad.to(grad_logits_ptr.dtype.element_ty), mask=cols < V)


def _block_v(V, device):
    # two rows in flight per step: half the block of the single-row kernels
    return min(triton.next_power_of_2(V), 2048 if device.type == "cuda" else 16384)


class FullKLFunction(torch.autograd.Function):
    """KL(p || q) = sum_j p_j (log p_j - log q_j), p = softmax(z / T), q = softmax(z_ref / T), per row.

    backward: dL/dz_j = g p_j (log p_j - log q_j - KL) / T for any upstream g; none to z_ref.
    """

    @staticmethod
    def forward(ctx, logits, ref_logits, temperature):
        shape, V = logits.shape[:-1], logits.shape[-1]
        a = rows_of(logits)  # [N, V]
        b = rows_of(ref_logits.detach())  # [N, V], any of the three dtypes
        N = a.shape[0]
        kl, m, log_s, mean = (torch.empty(N, dtype=torch.float32, device=a.device) for _ in range(4))
        launch("full_kl_fwd", _kl_fwd_kernel, (N,), a, b, kl, m, log_s, mean,
               V, a.stride(0), b.stride(0), float(temperature),
               BLOCK_V=_block_v(V, a.device), num_warps=8)
        ctx.save_for_backward(a, b, m, log_s, mean)
        ctx.temperature, ctx.logits_shape = float(temperature), logits.shape
        return kl.view(shape)

    @staticmethod
    def backward(ctx, grad_kl):
        a, b, m, log_s, mean = ctx.saved_tensors
        N, V = a.shape
        grad_kl = grad_kl.reshape(-1).float().contiguous()  # contiguous: also expands a broadcast
        grad_logits = torch.empty_like(a)
        launch("full_kl_bwd", _kl_bwd_kernel, (N,), a, b, grad_kl, m, log_s, mean, grad_logits,
               V, a.stride(0), b.stride(0), grad_logits.stride(0), ctx.temperature,
               BLOCK_V=_block_v(V, a.device), num_warps=8)
        return grad_logits.view(ctx.logits_shape), None, None


def full_kl(logits, ref_logits, temperature=1.0):
    """Exact KL(softmax(logits / T) || softmax(ref_logits / T)) per position; fp32, shape logits[..., 0].

    logits, ref_logits [..., V] (fp32, fp16 or bf16). Differentiable in logits; ref_logits is a constant.
    Triton for CUDA tensors (and CPU tensors inside kernels.triton_on_cpu()), the reference otherwise.
    """
    if logits.shape != ref_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and ref_logits {tuple(ref_logits.shape)} differ")
    if use_triton(logits) and use_triton(ref_logits):
        return FullKLFunction.apply(logits, ref_logits, temperature)
    return full_kl_reference(logits, ref_logits, temperature)
