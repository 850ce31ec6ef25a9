"""Per-token log-probabilities (and entropy) from logits, streaming once over the vocabulary.

RLHF asks the same question of every model it runs: how likely was the token that was actually there?

    logp = torch.log_softmax(logits / T, dim=-1).gather(-1, targets[..., None])[..., 0]

For N tokens and a vocabulary V (GPT-2: 50257) the naive version casts the [N, V] logits to fp32
(a copy twice the size of bf16 logits), reads it twice more and writes an [N, V] fp32 log_softmax,
which it keeps for the backward; the backward writes an [N, V] zero-filled gradient for the gather,
reads it with the saved log_softmax, writes the [N, V] fp32 gradient and casts it back. That is about
ten passes over [N, V], mostly in fp32, where the floor is three in the input dtype: one read forward,
one read and one write backward. Its memory peak holds two or three extra [N, V] fp32 tensors (3.3 GB
each at N = 16384 on GPT-2). The kernel below reads each row once, in blocks, keeps four numbers per
row for the backward, and writes nothing of size V until the gradient.

The math, for one row z[V], target y, temperature T, a = z / T, p = softmax(a):
    log p_y = a_y - logsumexp(a)                       d log p_y / dz_j = (1[j = y] - p_j) / T
    H = logsumexp(a) - sum_j p_j a_j                   dH / dz_j = -p_j (log p_j + H) / T
The streaming form (online softmax, Milakov & Gimelshein 2018), one block of columns at a time:
    1. m  = running max of a; when it grows from m to m', old sums are scaled by alpha = exp(m - m').
    2. r  = sum_j exp(a_j - m) over every column seen except one that attains the max, so that
            sum_j exp(a_j - m) = 1 + r and logsumexp(a) = m + log1p(r). Keeping the "1" apart keeps
            confident rows exact: when p_y -> 1, log p_y = -log1p(r) and 1 - p_y = r / (1 + r) are
            computed from the small r itself, not as 1 - (a number that rounded to 1).
    3. t  = sum_j exp(a_j - m) (a_j - m) (for the entropy), rescaled as t' = alpha (t + (1 + r)(m - m'))
            when the max moves; then H = log1p(r) - t / (1 + r), a sum of two non-negative terms.
Everything is fp32 inside the kernel whatever the input dtype.
"""
import torch

from ._dispatch import launch, rows_of, tl, triton, use_triton


def logprobs_reference(logits, targets, temperature=1.0, return_entropy=False):
    """log p(targets) under softmax(logits / temperature), in plain PyTorch (fp32, or fp64 if given fp64).

    logits [..., V], targets [...] int64 -> [...] (and the entropy [...] if return_entropy).
    """
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        z = z / temperature
    logp_all = torch.log_softmax(z, dim=-1)  # [..., V]: the one full-size intermediate
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if not return_entropy:
        return logp
    # -sum p log p, where columns masked to -inf (p = 0) add 0 and pass no NaN to the gradient
    finite_logp = logp_all.masked_fill(logp_all == float("-inf"), 0.0)
    entropy = -(logp_all.exp() * finite_logp).sum(-1)
    return logp, entropy


@triton.jit
def _log1p(x):
    # log(1 + x), exact for tiny x: the rounding error of u = 1 + x cancels in log(u) / (u - 1) (Kahan)
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * (x / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def _logprobs_fwd_kernel(
    logits_ptr, targets_ptr, logprobs_ptr, entropy_ptr,  # in: [N, V], [N]; out: [N], [N]
    max_ptr, lse_ptr, one_minus_p_ptr, mean_ptr,  # saved for backward, [N] each (fp32)
    V, stride_row, temperature,
    RETURN_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride passes 2^31 on real shapes
    row_ptr = logits_ptr + row * stride_row
    y = tl.load(targets_ptr + row)
    a_y = tl.load(row_ptr + y).to(tl.float32) / temperature

    m = -1e38  # a finite "minus infinity": exp(m - m') stays 0, never NaN, if a block is all -inf
    r = 0.0
    t = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        a = tl.load(row_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32) / temperature
        # 1. the running max and the factor that moves old sums onto it
        block_max = tl.max(a, axis=0)
        m_new = tl.maximum(m, block_max)
        alpha = tl.exp(m - m_new)
        e = tl.exp(a - m_new)  # [BLOCK_V], 0 at masked columns
        # 2. r: if this block holds the new max, the old max's 1 joins r (scaled) and one column
        #    equal to the new max is left out; otherwise every column of the block joins r
        at_max = a == m_new
        rest = tl.sum(tl.where(at_max, 0.0, e), axis=0) + (tl.sum(at_max.to(tl.float32), axis=0) - 1.0)
        r_new = tl.where(block_max > m, (r + 1.0) * alpha + rest, r + tl.sum(e, axis=0))
        # 3. t = sum e (a - m), for the entropy
        if RETURN_ENTROPY:
            e_a = tl.where(e > 0.0, e * (a - m_new), 0.0)
            t = alpha * (t + (1.0 + r) * (m - m_new)) + tl.sum(e_a, axis=0)
        r = r_new
        m = m_new

    lse = _log1p(r)  # logsumexp(a) - m
    logp = (a_y - m) - lse
    # 1 - p_y in fp32 before any rounding: r / (1 + r) when y is at the max (p_y may be ~1)
    one_minus_p = tl.where(a_y == m, r / (1.0 + r), 1.0 - tl.exp(logp))
    tl.store(logprobs_ptr + row, logp)
    tl.store(max_ptr + row, m)
    tl.store(lse_ptr + row, lse)
    tl.store(one_minus_p_ptr + row, one_minus_p)
    if RETURN_ENTROPY:
        mean = t / (1.0 + r)  # sum_j p_j (a_j - m) <= 0
        tl.store(entropy_ptr + row, lse - mean)
        tl.store(mean_ptr + row, mean)


@triton.jit
def _logprobs_bwd_kernel(
    logits_ptr, targets_ptr, grad_logp_ptr, grad_entropy_ptr,  # [N, V], [N], [N], [N]
    max_ptr, lse_ptr, one_minus_p_ptr, mean_ptr,  # saved by the forward, [N] each
    grad_logits_ptr,  # out: [N, V], the dtype of the logits
    V, stride_row, stride_grad_row, temperature,
    HAS_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    y = tl.load(targets_ptr + row)
    g_logp = tl.load(grad_logp_ptr + row)
    m = tl.load(max_ptr + row)
    lse = tl.load(lse_ptr + row)
    one_minus_p = tl.load(one_minus_p_ptr + row)
    if HAS_ENTROPY:
        g_entropy = tl.load(grad_entropy_ptr + row)
        mean = tl.load(mean_ptr + row)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        a = tl.load(row_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32) / temperature
        a_m = a - m  # a_j - m, so that log p_j = a_m - lse
        p = tl.exp(a_m - lse)
        # d log p_y / dz_j * T = 1[j = y] - p_j
        g = tl.where(cols == y, g_logp * one_minus_p, -g_logp * p)
        if HAS_ENTROPY:
            # dH / dz_j * T = -p_j (log p_j + H) = -p_j ((a_j - m) - mean)
            g -= g_entropy * tl.where(p > 0.0, p * (a_m - mean), 0.0)
        g = g / temperature
        tl.store(grad_logits_ptr + row * stride_grad_row + cols,
                 g.to(grad_logits_ptr.dtype.element_ty), mask=cols < V)


def _block_v(V, device):
    # GPU: 4096 columns per step keeps 8 warps busy; the interpreter: bigger numpy ops, fewer steps
    return min(triton.next_power_of_2(V), 4096 if device.type == "cuda" else 16384)


class LogProbsFunction(torch.autograd.Function):
    """log p_y = z_y / T - logsumexp(z / T) (and H = logsumexp(z / T) - sum_j p_j z_j / T), per row.

    backward: dL/dz_j = (g_logp (1[j = y] - p_j) - g_H p_j (log p_j + H)) / T, for any upstream g.
    """

    @staticmethod
    def forward(ctx, logits, targets, temperature, return_entropy):
        shape, V = targets.shape, logits.shape[-1]
        z = rows_of(logits)  # [N, V]
        y = targets.reshape(-1).contiguous()
        N = z.shape[0]
        f32 = dict(dtype=torch.float32, device=z.device)
        logp, m, lse, one_minus_p = (torch.empty(N, **f32) for _ in range(4))
        entropy, mean = (torch.empty(N, **f32) if return_entropy else logp for _ in range(2))
        BLOCK_V = _block_v(V, z.device)
        launch("logprobs_fwd", _logprobs_fwd_kernel, (N,),
               z, y, logp, entropy, m, lse, one_minus_p, mean, V, z.stride(0), float(temperature),
               RETURN_ENTROPY=return_entropy, BLOCK_V=BLOCK_V, num_warps=8)
        ctx.save_for_backward(z, y, m, lse, one_minus_p, mean)
        ctx.temperature, ctx.return_entropy = float(temperature), return_entropy
        ctx.logits_shape = logits.shape
        if return_entropy:
            return logp.view(shape), entropy.view(shape)
        return logp.view(shape)

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy=None):
        z, y, m, lse, one_minus_p, mean = ctx.saved_tensors
        N, V = z.shape
        grad_logp = grad_logp.reshape(-1).float().contiguous()  # contiguous: also expands a broadcast
        has_entropy = ctx.return_entropy and grad_entropy is not None
        grad_entropy = grad_entropy.reshape(-1).float().contiguous() if has_entropy else grad_logp
        grad_logits = torch.empty_like(z)
        launch("logprobs_bwd", _logprobs_bwd_kernel, (N,),
               z, y, grad_logp, grad_entropy, m, lse, one_minus_p, mean, grad_logits,
               V, z.stride(0), grad_logits.stride(0), ctx.temperature,
               HAS_ENTROPY=has_entropy, BLOCK_V=_block_v(V, z.device), num_warps=8)
        return grad_logits.view(ctx.logits_shape), None, None, None


def logprobs(logits, targets, temperature=1.0, return_entropy=False):
    """log p(targets) under softmax(logits / temperature); fp32, shape of targets.

    logits [..., V] (fp32, fp16 or bf16), targets [...] int64 in [0, V). With return_entropy, also the
    entropy of softmax(logits / temperature) per position. Differentiable in logits.
    Triton for CUDA tensors (and CPU tensors inside kernels.triton_on_cpu()), the reference otherwise.
    """
    if use_triton(logits):
        return LogProbsFunction.apply(logits, targets, temperature, return_entropy)
    return logprobs_reference(logits, targets, temperature, return_entropy)
