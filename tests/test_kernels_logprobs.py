"""kernels.logprobs: the Triton kernel (run by Triton's interpreter on CPU) and the PyTorch reference
against float64 math, values and gradients, on fresh random inputs with random upstream gradients.

Cases: odd shapes (V not a multiple of the block, several leading dims), temperature != 1, columns
masked to -inf, logits of magnitude 1e4, confident rows (p(target) -> 1), a GPT-2-sized vocabulary,
and proof that the kernel, not the reference, ran (kernels.stats).

Run: python -m pytest tests/test_kernels_logprobs.py -q   (conftest.py sets TRITON_INTERPRET=1)
"""
import pytest
import torch

from minirlhf import kernels

requires_interpreter = pytest.mark.skipif(not kernels.INTERPRET, reason="needs triton and TRITON_INTERPRET=1")
# the interpreter evaluates both sides of tl.where in numpy, which warns on the discarded -inf - -inf
pytestmark = [requires_interpreter, pytest.mark.filterwarnings("ignore::RuntimeWarning")]


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def run(fn, logits, targets, temperature, seed=1):
    """Values (log p, entropy) and d/dlogits of sum(g1 * log p + g2 * H) for random g1, g2."""
    logits = logits.detach().clone().requires_grad_()
    logp, entropy = fn(logits, targets, temperature, return_entropy=True)
    gen = torch.Generator().manual_seed(seed)
    g1, g2 = (torch.randn(targets.shape, generator=gen, dtype=torch.float64) for _ in range(2))
    (logp * g1.to(logp.dtype) + entropy * g2.to(entropy.dtype)).sum().backward()
    return logp, entropy, logits.grad


def check(logits, targets, temperature=1.0, tol=1e-5, ref_tol=1e-5):
    """Triton kernel within tol, fp32 reference within ref_tol, of the float64 reference."""
    truth = run(kernels.logprobs_reference, logits.double(), targets, temperature)
    before = kernels.stats["logprobs_bwd"]
    with kernels.triton_on_cpu():
        out = run(kernels.logprobs, logits, targets, temperature)
    assert kernels.stats["logprobs_bwd"] == before + 1  # the kernel ran, not the reference
    ref32 = run(kernels.logprobs_reference, logits, targets, temperature)
    errors = []
    for name, o, r, t in zip(("logp", "entropy", "grad"), out, ref32, truth):
        assert o.dtype == torch.float32 and o.shape == t.shape
        assert torch.isfinite(o).all(), name
        errors.append(rel_err(o, t))
        assert errors[-1] < tol, (name, errors[-1])
        assert rel_err(r, t) < ref_tol, (name, "reference", rel_err(r, t))
    return errors


@pytest.mark.parametrize("shape,V", [((37,), 1031), ((2, 3, 5), 517), ((3,), 4099)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_float64(shape, V, temperature):
    gen = torch.Generator().manual_seed(V)
    logits = 3 * torch.randn(*shape, V, generator=gen)
    targets = torch.randint(0, V, shape, generator=gen)
    check(logits, targets, temperature)


def test_masked_columns():
    gen = torch.Generator().manual_seed(0)
    N, V = 24, 1031
    logits = torch.randn(N, V, generator=gen)
    targets = torch.randint(0, V, (N,), generator=gen)
    masked = torch.rand(N, V, generator=gen) < 0.5
    masked[:4, :] = True  # a few rows keep only the target (p = 1, entropy 0)
    masked[4:8, :-300] = True  # whole blocks of -inf before the first finite column
    masked[torch.arange(N), targets] = False
    check(logits.masked_fill(masked, float("-inf")), targets, temperature=1.3)


def test_large_magnitude():
    gen = torch.Generator().manual_seed(1)
    logits = 1e4 * torch.randn(16, 1031, generator=gen)
    # targets near the top of each row, so log p is not just -1e4-sized noise
    targets = logits.topk(3, dim=-1).indices[:, torch.randint(0, 3, (1,), generator=gen).item()]
    # the fp32 reference's entropy, sum p log p of near-one-hot rows, keeps only ~4 digits
    check(logits, targets, ref_tol=1e-3)


def test_confident_rows():
    """p(target) = 1 - 1e-6 ... 1 - 1e-12: log p, 1 - p and the entropy must keep their digits."""
    gen = torch.Generator().manual_seed(2)
    N, V = 12, 1031
    logits = torch.randn(N, V, generator=gen)
    targets = torch.randint(0, V, (N,), generator=gen)
    logits[torch.arange(N), targets] += torch.linspace(20.0, 35.0, N)
    truth = run(kernels.logprobs_reference, logits.double(), targets, 1.0)
    with kernels.triton_on_cpu():
        out = run(kernels.logprobs, logits, targets, 1.0)
    assert (truth[0] > -1e-5).all()  # the test is what it says: log p(target) ~ -1e-6 ... -1e-12
    for name, o, t in zip(("logp", "entropy", "grad"), out, truth):
        assert rel_err(o, t) < 1e-5, (name, rel_err(o, t))
    # per row, against float64 math that is itself exact here (float64's 1 - p would keep ~3 digits):
    # with s = sum_{j != y} exp(z_j - z_y): log p_y = -log1p(s) and d log p_y / d z_y = 1 - p_y = s / (1 + s)
    rows, z64 = torch.arange(N), logits.double()
    s = (z64 - z64[rows, targets][:, None]).exp()
    s = s.index_put((rows, targets), torch.zeros(N, dtype=torch.float64)).sum(-1)
    x = logits.clone().requires_grad_()
    with kernels.triton_on_cpu():
        logp = kernels.logprobs(x, targets)
    logp.sum().backward()
    assert torch.allclose(logp.double(), -torch.log1p(s), rtol=1e-5, atol=0)
    assert torch.allclose(x.grad[rows, targets].double(), s / (1 + s), rtol=1e-5, atol=0)


def test_gpt2_vocabulary():
    gen = torch.Generator().manual_seed(3)
    V = 50257
    logits = 2 * torch.randn(4, V, generator=gen)
    check(logits, torch.randint(0, V, (4,), generator=gen), temperature=0.9)


def test_without_entropy_and_broadcast_gradient():
    """The one-output form, driven by a mean (a stride-0 upstream gradient)."""
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 9, 777, generator=gen)
    targets = torch.randint(0, 777, (2, 9), generator=gen)
    x64 = logits.double().requires_grad_()
    kernels.logprobs_reference(x64, targets).mean().backward()
    x = logits.clone().requires_grad_()
    with kernels.triton_on_cpu():
        kernels.logprobs(x, targets).mean().backward()
    assert rel_err(x.grad, x64.grad) < 1e-5


def test_cpu_dispatch_uses_reference_outside_the_context():
    logits, targets = torch.randn(3, 50), torch.randint(0, 50, (3,))
    before = dict(kernels.stats)
    out = kernels.logprobs(logits, targets)
    assert dict(kernels.stats) == before
    assert torch.equal(out, kernels.logprobs_reference(logits, targets))
