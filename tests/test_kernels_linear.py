"""kernels.linear_logprobs: log p(target) of hidden @ weight.T, the Triton kernel (run by Triton's
interpreter on CPU) and the PyTorch reference against float64 math; values and gradients to hidden
and weight with random upstream gradients.

Cases: odd shapes (N, H, V not multiples of the tiles), several leading dims, temperature != 1,
logits of magnitude 1e4, confident rows, a GPT-2-sized vocabulary, and proof that the kernel ran.

Run: python -m pytest tests/test_kernels_linear.py -q   (conftest.py sets TRITON_INTERPRET=1)
"""
import pytest
import torch

from minirlhf import kernels

requires_interpreter = pytest.mark.skipif(not kernels.INTERPRET, reason="needs triton and TRITON_INTERPRET=1")
# the interpreter evaluates both sides of tl.where in numpy, which warns on the discarded -inf - -inf
pytestmark = [requires_interpreter, pytest.mark.filterwarnings("ignore::RuntimeWarning")]


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def run(fn, hidden, weight, targets, temperature, seed=1):
    """log p, and d/dhidden, d/dweight of sum(g * log p) for a random g."""
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    logp = fn(hidden, weight, targets, temperature)
    g = torch.randn(targets.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (logp * g.to(logp.dtype)).sum().backward()
    return logp, hidden.grad, weight.grad


def check(hidden, weight, targets, temperature=1.0, tol=1e-5):
    truth = run(kernels.linear_logprobs_reference, hidden.double(), weight.double(), targets, temperature)
    before = kernels.stats["linear_logprobs_bwd"]
    with kernels.triton_on_cpu():
        out = run(kernels.linear_logprobs, hidden, weight, targets, temperature)
    assert kernels.stats["linear_logprobs_bwd"] == before + 1  # the kernel ran, not the reference
    ref32 = run(kernels.linear_logprobs_reference, hidden, weight, targets, temperature)
    errors = []
    for name, o, r, t in zip(("logp", "grad_hidden", "grad_weight"), out, ref32, truth):
        assert o.shape == t.shape and torch.isfinite(o).all(), name
        errors.append(rel_err(o, t))
        assert errors[-1] < tol, (name, errors[-1])
        assert rel_err(r, t) < tol, (name, "reference", rel_err(r, t))
    assert out[0].dtype == torch.float32
    return errors


def inputs(shape, H, V, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, H, generator=gen)
    weight = scale * torch.randn(V, H, generator=gen) / H**0.5
    return hidden, weight, torch.randint(0, V, shape, generator=gen)


@pytest.mark.parametrize("shape,H,V", [((37,), 48, 1031), ((2, 3, 5), 80, 517), ((16,), 16, 300)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_float64(shape, H, V, temperature):
    check(*inputs(shape, H, V, seed=V, scale=3.0), temperature)


def test_large_magnitude():
    check(*inputs((20,), 32, 700, seed=1, scale=1e4))


def test_confident_rows():
    hidden, weight, targets = inputs((20,), 32, 700, seed=2)
    # hidden state pushed along the target's unembedding row: p(target) = 1 - 3e-2 ... 1 - 3e-5
    hidden = hidden + 20 * weight[targets] / weight[targets].norm(dim=-1, keepdim=True) ** 2
    truth = run(kernels.linear_logprobs_reference, hidden.double(), weight.double(), targets, 1.0)
    assert (truth[0] > -0.05).all()
    with kernels.triton_on_cpu():
        out = run(kernels.linear_logprobs, hidden, weight, targets, 1.0)
    ref32 = run(kernels.linear_logprobs_reference, hidden, weight, targets, 1.0)
    # fp32 logits z ~ 20 carry ~1e-6 absolute rounding from the matmul, and log p ~ -1e-4 inherits it:
    # the kernel must do as well as the fp32 reference, not better than fp32 logits allow
    for o, r, t in zip(out, ref32, truth):
        assert rel_err(o, t) < max(1e-4, 3 * rel_err(r, t))


def test_gpt2_vocabulary():
    check(*inputs((4,), 32, 50257, seed=3, scale=2.0), temperature=0.9)


def test_cpu_dispatch_uses_reference_outside_the_context():
    hidden, weight, targets = inputs((3,), 8, 50, seed=4)
    before = dict(kernels.stats)
    out = kernels.linear_logprobs(hidden, weight, targets)
    assert dict(kernels.stats) == before
    assert torch.equal(out, kernels.linear_logprobs_reference(hidden, weight, targets))
