"""kernels.full_kl: the Triton kernel (run by Triton's interpreter on CPU) and the PyTorch reference
against float64 math, values and gradients (to logits only), with random upstream gradients.

Cases: odd shapes, several leading dims, temperature != 1, columns masked to -inf, logits of magnitude
1e4, a GPT-2-sized vocabulary, KL(p, p) = 0 exactly (value and gradient), fp16/bf16 ref_logits with fp32
logits, and proof that the kernel ran (kernels.stats).

Run: python -m pytest tests/test_kernels_kl.py -q   (conftest.py sets TRITON_INTERPRET=1)
"""
import pytest
import torch

from minirlhf import kernels

requires_interpreter = pytest.mark.skipif(not kernels.INTERPRET, reason="needs triton and TRITON_INTERPRET=1")
# the interpreter evaluates both sides of tl.where in numpy, which warns on the discarded -inf - -inf
pytestmark = [requires_interpreter, pytest.mark.filterwarnings("ignore::RuntimeWarning")]


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def run(fn, logits, ref_logits, temperature, seed=1):
    """KL values and d/dlogits of sum(g * KL) for a random g; ref_logits must get no gradient."""
    logits = logits.detach().clone().requires_grad_()
    ref_logits = ref_logits.detach().clone().requires_grad_()
    kl = fn(logits, ref_logits, temperature)
    g = torch.randn(kl.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (kl * g.to(kl.dtype)).sum().backward()
    assert ref_logits.grad is None
    return kl, logits.grad


def check(logits, ref_logits, temperature=1.0, tol=1e-5, ref_tol=1e-5):
    truth = run(kernels.full_kl_reference, logits.double(), ref_logits.double(), temperature)
    before = kernels.stats["full_kl_bwd"]
    with kernels.triton_on_cpu():
        out = run(kernels.full_kl, logits, ref_logits, temperature)
    assert kernels.stats["full_kl_bwd"] == before + 1  # the kernel ran, not the reference
    ref32 = run(kernels.full_kl_reference, logits, ref_logits, temperature)
    for name, o, r, t in zip(("kl", "grad"), out, ref32, truth):
        assert o.dtype == torch.float32 and o.shape == t.shape and torch.isfinite(o).all()
        assert rel_err(o, t) < tol, (name, rel_err(o, t))
        assert rel_err(r, t) < ref_tol, (name, "reference", rel_err(r, t))


def pair(shape, V, seed, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(*shape, V, generator=gen)
    return logits, logits + scale * torch.randn(*shape, V, generator=gen)


@pytest.mark.parametrize("shape,V", [((37,), 1031), ((2, 3, 5), 517), ((3,), 4099)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_float64(shape, V, temperature):
    check(*pair(shape, V, seed=V), temperature)


def test_masked_columns():
    logits, ref_logits = pair((20,), 1031, seed=0)
    masked = torch.rand(20, 1031, generator=torch.Generator().manual_seed(0)) < 0.5
    masked[4:8, :-300] = True  # whole blocks of -inf before the first finite column
    masked[:, 0] = False
    check(logits.masked_fill(masked, float("-inf")), ref_logits.masked_fill(masked, float("-inf")), 1.3)


def test_large_magnitude():
    # near one-hot p: the gradient p_j (d_j - E_p[d]) subtracts numbers of size 1e4 to get ~1,
    # which costs fp32 a few digits whoever computes it (the fp32 reference does worse)
    logits, ref_logits = pair((16,), 1031, seed=1, scale=1e4)
    check(logits, ref_logits, tol=1e-4, ref_tol=1e-3)


def test_gpt2_vocabulary():
    check(*pair((3,), 50257, seed=3), temperature=0.9)


def test_kl_of_p_with_itself_is_zero():
    logits, _ = pair((2, 7), 1031, seed=4)
    logits[0, :3, :200] = float("-inf")
    x = logits.clone().requires_grad_()
    with kernels.triton_on_cpu():
        kl = kernels.full_kl(x, logits, temperature=0.8)
    kl.backward(torch.randn(kl.shape))
    assert torch.equal(kl, torch.zeros_like(kl))
    assert torch.equal(x.grad, torch.zeros_like(x.grad))


def test_half_precision_reference_logits():
    """A bf16/fp16 reference model's logits next to fp32 policy logits: upcast inside the kernel."""
    logits, ref_logits = pair((5,), 1031, seed=5)
    for dtype in (torch.float16, torch.bfloat16):
        ref_low = ref_logits.to(dtype)
        truth = kernels.full_kl_reference(logits.double(), ref_low.double())
        with kernels.triton_on_cpu():
            out = kernels.full_kl(logits, ref_low)
        assert rel_err(out, truth) < 1e-5


def test_cpu_dispatch_uses_reference_outside_the_context():
    logits, ref_logits = pair((3,), 50, seed=6)
    before = dict(kernels.stats)
    out = kernels.full_kl(logits, ref_logits)
    assert dict(kernels.stats) == before
    assert torch.equal(out, kernels.full_kl_reference(logits, ref_logits))
