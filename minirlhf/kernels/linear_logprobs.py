"""Log-probabilities of `hidden @ weight.T` without ever writing the [N, V] logits.

The last layer of a language model maps hidden states [N, H] to logits [N, V] with the unembedding
weight [V, H]. The naive log-prob

    logits = hidden @ weight.T                     # [N, V]: 823 MB in bf16 at N = 8192, V = 50257
    logp = torch.log_softmax(logits.float() / T, -1).gather(-1, targets[:, None])[:, 0]

writes the logits, an fp32 copy, the log_softmax, and keeps them for the backward; that is most of
the memory of a small model's training step. Here the logits exist only one tile at a time, in
registers (the idea of Cut Cross-Entropy, Wijmans et al. 2024):

  forward, one program per BLOCK_N rows:
    1. for each BLOCK_V block of the vocabulary: the tile z = hidden[rows] @ weight[cols].T / T
       (a matmul over H in BLOCK_H steps, fp32 accumulator);
    2. online logsumexp over the tiles: m' = max(m, rowmax z), s' = s exp(m - m') + sum exp(z - m');
       and pick up z_y where a column is the row's target;
    3. log p_y = (z_y - m) - log s. Save m and log s per row: 8 bytes a row.
  backward, one program per (BLOCK_N rows, BLOCK_V columns) tile:
    4. recompute the tile z (2 N H V FLOPs over the grid, as the forward);
    5. dz = g (1[j = y] - p) / T with p = exp(z - m - log s), in fp32;
    6. dhidden[rows] += dz @ weight[cols] and dweight[cols] += dz.T @ hidden[rows], added atomically
       into fp32 buffers, since every vocabulary tile adds to the same rows of dhidden and every row
       tile to the same rows of dweight (4 N H V FLOPs).
Total 2 N H V FLOPs forward and 6 N H V backward; memory beyond inputs and gradients: O(N).
The matmuls run in the input dtype on the GPU (bf16 tensor cores, fp32 accumulation); under the
interpreter, whose bf16 arithmetic is wrong, every load is upcast to fp32 first.
"""
import torch

from ._dispatch import launch, tl, triton, use_triton
from .logprobs import logprobs_reference


def linear_logprobs_reference(hidden, weight, targets, temperature=1.0):
    """log p(targets) under softmax(hidden @ weight.T / T), in plain PyTorch (materialises the logits).

    hidden [..., H], weight [V, H], targets [...] int64 -> [...] fp32 (fp64 if given fp64).
    """
    dtype = torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)
    logits = hidden.to(dtype) @ weight.to(dtype).T  # [..., V]
    return logprobs_reference(logits, targets, temperature)


@triton.jit
def _logits_tile(hidden_ptr, weight_ptr, rows, cols, H, stride_hidden, stride_weight,
                 UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    # z[BLOCK_N, BLOCK_V] = hidden[rows] @ weight[cols].T, fp32 accumulator, zeros outside the bounds
    # (rows, cols: int64 indices already clamped to valid rows/columns by the caller's masks)
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        x = tl.load(hidden_ptr + rows[:, None] * stride_hidden + hs[None, :], mask=hs[None, :] < H, other=0.0)
        w = tl.load(weight_ptr + cols[:, None] * stride_weight + hs[None, :], mask=hs[None, :] < H, other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _linear_fwd_kernel(
    hidden_ptr, weight_ptr, targets_ptr,  # [N, H], [V, H], [N]
    logprobs_ptr, max_ptr, log_sum_ptr,  # out: [N] fp32 each
    N, V, H, stride_hidden, stride_weight, temperature,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    rows = tl.where(row_ok, rows, 0)  # rows past N re-read row 0; their results are not stored
    y = tl.load(targets_ptr + rows)
    m = tl.full((BLOCK_N,), -1e38, dtype=tl.float32)
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)
    z_y = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        col_ok = cols < V
        # 1. one tile of logits, never stored
        z = _logits_tile(hidden_ptr, weight_ptr, rows, tl.where(col_ok, cols, 0), H, stride_hidden,
                         stride_weight, UPCAST, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H) / temperature
        z = tl.where(col_ok[None, :], z, float("-inf"))
        # 2. online logsumexp along the vocabulary, and the target's logit
        m_new = tl.maximum(m, tl.max(z, axis=1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        z_y += tl.sum(tl.where(cols[None, :] == y[:, None], z, 0.0), axis=1)
        m = m_new
    # 3. log p_y = z_y - logsumexp(z)
    log_s = tl.log(s)
    tl.store(logprobs_ptr + rows, (z_y - m) - log_s, mask=row_ok)
    tl.store(max_ptr + rows, m, mask=row_ok)
    tl.store(log_sum_ptr + rows, log_s, mask=row_ok)


@triton.jit
def _linear_bwd_kernel(
    hidden_ptr, weight_ptr, targets_ptr, grad_ptr, max_ptr, log_sum_ptr,  # [N, H], [V, H], [N] x 4
    grad_hidden_ptr, grad_weight_ptr,  # out, fp32 and zeroed: [N, H], [V, H]
    N, V, H, stride_hidden, stride_weight, temperature,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < N
    col_ok = cols < V
    rows = tl.where(row_ok, rows, 0)
    cols = tl.where(col_ok, cols, 0)
    y = tl.load(targets_ptr + rows)
    g = tl.where(row_ok, tl.load(grad_ptr + rows), 0.0)
    m = tl.load(max_ptr + rows)
    log_s = tl.load(log_sum_ptr + rows)
    # 4. recompute the tile of logits
    z = _logits_tile(hidden_ptr, weight_ptr, rows, cols, H, stride_hidden, stride_weight,
                     UPCAST, PRECISION, BLOCK_N, BLOCK_V, BLOCK_H) / temperature
    # 5. dz = g (1[j = y] - p) / T, fp32; zero outside the valid rows and columns
    p = tl.exp((z - m[:, None]) - log_s[:, None])
    dz = g[:, None] * (tl.where(cols[None, :] == y[:, None], 1.0, 0.0) - p) / temperature
    dz = tl.where(col_ok[None, :], dz, 0.0)
    # 6. dhidden += dz @ weight[cols], dweight += dz.T @ hidden[rows], one BLOCK_H slice at a time
    for h0 in range(0, H, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        h_ok = hs < H
        x = tl.load(hidden_ptr + rows[:, None] * stride_hidden + hs[None, :], mask=h_ok[None, :], other=0.0)
        w = tl.load(weight_ptr + cols[:, None] * stride_weight + hs[None, :], mask=h_ok[None, :], other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        dz_in = dz.to(x.dtype)  # bf16 on the GPU for the tensor cores, after the fp32 math above
        grad_x = tl.dot(dz_in, w, input_precision=PRECISION)  # [BLOCK_N, BLOCK_H]
        grad_w = tl.dot(tl.trans(dz_in), x, input_precision=PRECISION)  # [BLOCK_V, BLOCK_H]
        tl.atomic_add(grad_hidden_ptr + rows[:, None] * H + hs[None, :], grad_x,
                      mask=row_ok[:, None] & h_ok[None, :])
        tl.atomic_add(grad_weight_ptr + cols[:, None] * H + hs[None, :], grad_w,
                      mask=col_ok[:, None] & h_ok[None, :])


def _config(x):
    # fp32 inputs, and everything under the interpreter: fp32 matmuls in full ("ieee") precision;
    # fp16/bf16 on the GPU: tensor-core matmuls in the input dtype, fp32 accumulation.
    upcast = not x.is_cuda or x.dtype == torch.float32
    cfg = dict(UPCAST=upcast, PRECISION="ieee" if upcast else "tf32")
    # GPU tiles: sizes that compile for an H100 (sm_90) without register spills, forward and
    # backward (checked with ptxas); not autotuned, since autotuning would re-run the atomic adds.
    # The interpreter: the smallest row tile tl.dot accepts, a wide vocabulary tile: few numpy steps.
    if x.is_cuda and upcast:
        return dict(cfg, BLOCK_N=32, BLOCK_V=128, BLOCK_H=16, num_warps=8, num_stages=3)
    if x.is_cuda:
        return dict(cfg, BLOCK_N=64, BLOCK_V=128, BLOCK_H=32, num_warps=8, num_stages=3)
    return dict(cfg, BLOCK_N=16, BLOCK_V=256, BLOCK_H=64)


class LinearLogProbsFunction(torch.autograd.Function):
    """log p_y = z_y / T - logsumexp(z / T) with z = x W^T computed tile by tile, per row of x.

    backward: dz = g (1[j = y] - p) / T (never stored whole); dx = dz W, dW = dz^T x.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature):
        shape, H = targets.shape, hidden.shape[-1]
        x = hidden.reshape(-1, H).contiguous()  # [N, H]
        w = weight.contiguous()  # [V, H]
        y = targets.reshape(-1).contiguous()
        N, V = x.shape[0], w.shape[0]
        logp, m, log_s = (torch.empty(N, dtype=torch.float32, device=x.device) for _ in range(3))
        cfg = _config(x)
        launch("linear_logprobs_fwd", _linear_fwd_kernel, (triton.cdiv(N, cfg["BLOCK_N"]),),
               x, w, y, logp, m, log_s, N, V, H, x.stride(0), w.stride(0), float(temperature), **cfg)
        ctx.save_for_backward(x, w, y, m, log_s)
        ctx.temperature, ctx.hidden_shape = float(temperature), hidden.shape
        return logp.view(shape)

    @staticmethod
    def backward(ctx, grad_logp):
        x, w, y, m, log_s = ctx.saved_tensors
        (N, H), V = x.shape, w.shape[0]
        grad_logp = grad_logp.reshape(-1).float().contiguous()
        grad_x = torch.zeros(N, H, dtype=torch.float32, device=x.device)
        grad_w = torch.zeros(V, H, dtype=torch.float32, device=x.device)
        cfg = _config(x)
        grid = (triton.cdiv(N, cfg["BLOCK_N"]), triton.cdiv(V, cfg["BLOCK_V"]))
        launch("linear_logprobs_bwd", _linear_bwd_kernel, grid,
               x, w, y, grad_logp, m, log_s, grad_x, grad_w, N, V, H, x.stride(0), w.stride(0),
               ctx.temperature, **cfg)
        return grad_x.to(x.dtype).view(ctx.hidden_shape), grad_w.to(w.dtype), None, None


def linear_logprobs(hidden, weight, targets, temperature=1.0):
    """log p(targets) under softmax(hidden @ weight.T / T), without the [N, V] logits; fp32.

    hidden [..., H], weight [V, H] (fp32, fp16 or bf16; converted to one dtype), targets [...] int64.
    Differentiable in hidden and weight. Triton for CUDA tensors (and CPU tensors inside
    kernels.triton_on_cpu()), the reference otherwise.
    """
    if use_triton(hidden) and use_triton(weight):
        if hidden.dtype != weight.dtype:
            dtype = torch.promote_types(hidden.dtype, weight.dtype)
            hidden, weight = hidden.to(dtype), weight.to(dtype)
        return LinearLogProbsFunction.apply(hidden, weight, targets, temperature)
    return linear_logprobs_reference(hidden, weight, targets, temperature)
