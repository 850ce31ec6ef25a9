"""GPU checks of the compiled Triton kernels: bf16/fp16/fp32 at real sizes against float64 math and
against plain low-precision torch, N x V past 2^31 elements, and training with the kernels giving the
same losses as training with the references over a few hundred optimizer steps.

Marked `gpu`; skipped without CUDA, and under TRITON_INTERPRET=1 (which tests/conftest.py sets only where
there is no GPU, and which would run the kernels in the interpreter). On a GPU machine:
    python -m pytest tests/test_kernels_gpu.py -q
"""
import pytest
import torch

from minirlhf import kernels

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available() or kernels.INTERPRET,
                               reason="needs CUDA and compiled kernels (TRITON_INTERPRET=0)")
pytestmark = [pytest.mark.gpu, needs_gpu]
DEV = "cuda"
# (values, gradients) tolerance against float64 math on the same (already rounded) inputs:
# values are fp32 math throughout; gradients are stored in the input dtype
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-5, 2e-3), torch.bfloat16: (1e-5, 1e-2)}


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def values_and_grads(fn, inputs, *rest):
    """Outputs of fn(*inputs, *rest) and the gradients to inputs of sum(g * out) for random g."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    outs = fn(*leaves, *rest)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator(device=DEV).manual_seed(0)
    total = sum((o * torch.randn(o.shape, device=DEV, generator=gen, dtype=torch.float64).to(o.dtype)).sum()
                for o in outs)
    total.backward()
    return [o.detach() for o in outs] + [x.grad for x in leaves]


def naive_logprobs(z, y, T):
    """Plain torch in the input dtype, as a training script without kernels would do it."""
    logp_all = torch.log_softmax(z / T, dim=-1)
    return logp_all.gather(-1, y[:, None])[:, 0], -(logp_all.exp() * logp_all).sum(-1)


def naive_kl(z, r, T):
    logp, logq = torch.log_softmax(z / T, dim=-1), torch.log_softmax(r / T, dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N,V", [(4096, 50257), (1024, 128256)])
def test_logprobs_and_kl_real_sizes(dtype, N, V):
    gen = torch.Generator(device=DEV).manual_seed(N)
    logits32 = 3 * torch.randn(N, V, device=DEV, generator=gen)
    ref32 = logits32 + torch.randn(N, V, device=DEV, generator=gen)
    targets = torch.randint(0, V, (N,), device=DEV, generator=gen)
    logits, ref = logits32.to(dtype), ref32.to(dtype)
    tol_value, tol_grad = TOL[dtype]
    cases = [  # (kernel, reference, plain torch in the input dtype, second argument)
        (kernels.logprobs, kernels.logprobs_reference, naive_logprobs, targets, dict(return_entropy=True)),
        (kernels.full_kl, kernels.full_kl_reference, naive_kl, ref, {}),
    ]
    for fn, reference, naive, other, kw in cases:
        # 1. against float64 math on the same, already rounded, inputs
        other64 = other.double() if other.is_floating_point() else other
        truth = values_and_grads(lambda z, o: reference(z, o, 0.9, **kw), [logits.double()], other64)
        out = values_and_grads(lambda z, o: fn(z, o, 0.9, **kw), [logits], other)
        for o, t in zip(out[:-1], truth[:-1]):
            assert o.dtype == torch.float32 and rel_err(o, t) < tol_value
        assert out[-1].dtype == dtype and rel_err(out[-1], truth[-1]) < tol_grad
        if dtype == torch.float32:
            continue
        # 2. against float64 math on the fp32 originals: the kernel on rounded inputs does no worse
        #    than plain torch in that dtype (whose log_softmax output is rounded as well)
        other_orig = ref32.double() if other.is_floating_point() else other
        truth_orig = values_and_grads(lambda z, o: reference(z, o, 0.9, **kw), [logits32.double()], other_orig)
        plain = values_and_grads(lambda z, o: naive(z, o, 0.9), [logits], other)
        for o, n, t in zip(out, plain, truth_orig):
            assert rel_err(o, t) <= 1.5 * rel_err(n, t) + 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("H", [768, 2048])
def test_linear_logprobs_real_sizes(dtype, H):
    N, V = 2048, 50257
    gen = torch.Generator(device=DEV).manual_seed(H)
    hidden = torch.randn(N, H, device=DEV, generator=gen).to(dtype)
    weight = (2 * torch.randn(V, H, device=DEV, generator=gen) / H**0.5).to(dtype)
    targets = torch.randint(0, V, (N,), device=DEV, generator=gen)
    truth = values_and_grads(kernels.linear_logprobs_reference, [hidden.double(), weight.double()],
                             targets, 0.8)
    out = values_and_grads(kernels.linear_logprobs, [hidden, weight], targets, 0.8)
    # values: fp32 math on exact bf16 products; the fp32 accumulation order differs from float64's
    assert out[0].dtype == torch.float32 and rel_err(out[0], truth[0]) < 1e-4
    for o, t in zip(out[1:], truth[1:]):
        assert o.dtype == dtype and rel_err(o, t) < TOL[dtype][1]


def test_rows_times_vocab_past_2_to_the_31():
    V = 50257
    N = 2**31 // V + 64  # the last rows start past element 2^31
    gen = torch.Generator(device=DEV).manual_seed(0)
    logits = torch.randn(N, V, device=DEV, dtype=torch.bfloat16, generator=gen).requires_grad_()
    targets = torch.randint(0, V, (N,), device=DEV, generator=gen)
    logp, entropy = kernels.logprobs(logits, targets, return_entropy=True)
    (logp.sum() + entropy.sum()).backward()
    kl = kernels.full_kl(logits, logits.detach().flip(0))
    tail = slice(N - 64, N)
    z = logits.detach()[tail].double().requires_grad_()
    ref_logp, ref_entropy = kernels.logprobs_reference(z, targets[tail], return_entropy=True)
    (ref_logp.sum() + ref_entropy.sum()).backward()
    assert rel_err(logp[tail], ref_logp) < 1e-5 and rel_err(entropy[tail], ref_entropy) < 1e-5
    assert rel_err(logits.grad[tail], z.grad) < 1e-2
    ref_kl = kernels.full_kl_reference(z.detach(), logits.detach().flip(0)[tail].double())
    assert rel_err(kl[tail], ref_kl) < 1e-5


@pytest.mark.parametrize("path", ["logits", "linear"])
def test_training_with_kernels_matches_reference(path):
    """300 Adam steps of a small next-token model, fp32: kernel and reference losses agree step by step."""
    V, H, N = 8191, 128, 1024
    gen = torch.Generator(device=DEV).manual_seed(0)
    inputs = torch.randint(0, V, (N,), device=DEV, generator=gen)
    targets = (inputs * 7 + 3) % V  # a learnable next token

    def train(logprobs, full_kl, linear_logprobs):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Embedding(V, H), torch.nn.Linear(H, H), torch.nn.GELU()).to(DEV)
        lm_head = torch.nn.Linear(H, V, bias=False).to(DEV)
        ref_logits = torch.randn(N, V, device=DEV, generator=torch.Generator(device=DEV).manual_seed(1))
        opt = torch.optim.Adam([*model.parameters(), *lm_head.parameters()], lr=1e-3)
        losses = []
        for _ in range(300):
            hidden = model(inputs)
            if path == "linear":
                loss = -linear_logprobs(hidden, lm_head.weight, targets, 1.0).mean()
            else:
                logp, entropy = logprobs(lm_head(hidden), targets, 1.0, return_entropy=True)
                kl = full_kl(lm_head(hidden), ref_logits, 1.0)
                loss = -logp.mean() + 0.01 * kl.mean() - 0.01 * entropy.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return torch.tensor(losses)

    allow_tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
    try:
        fast = train(kernels.logprobs, kernels.full_kl, kernels.linear_logprobs)
        slow = train(kernels.logprobs_reference, kernels.full_kl_reference, kernels.linear_logprobs_reference)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    assert fast[-1] < 0.8 * fast[0]  # it learned something
    assert torch.allclose(fast, slow, rtol=1e-3, atol=1e-3), (fast - slow).abs().max()
