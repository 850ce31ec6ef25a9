"""The over-optimisation fits (minirlhf/lab/overopt.py): Gao et al.'s two forms, fitted to synthetic data made
from known coefficients plus seeded noise, recover the coefficients within a few percent; the peak agrees
with a grid search over the true curve (also when gold falls from the start, alpha < 0: best-of-n's peak is
then d = 0); bad input is refused with a clear error.

    python -m pytest tests/test_lab_overopt.py -q
"""

import math
import random

import pytest

from minirlhf.lab.overopt import fit, measured_peak, peak


def true_curve(form, alpha, beta, d):  # written out here, independently of overopt.predict
    return d * (alpha - beta * d) if form == "bon" else d * (alpha - beta * math.log(d))


@pytest.mark.parametrize("form,alpha,beta", [("bon", 0.8, 0.25), ("bon", 1.5, 0.9), ("rl", 0.4, 0.5),
                                             ("rl", 1.2, 0.6)])
def test_fit_recovers_known_coefficients(form, alpha, beta):
    rng = random.Random(0)
    ds = [0.05 + 0.05 * i for i in range(60)]  # d from 0.05 to 3.0
    rs = [true_curve(form, alpha, beta, d) + rng.gauss(0, 0.01) for d in ds]
    got = fit(form, ds, rs)
    assert got["alpha"] == pytest.approx(alpha, rel=0.03)
    assert got["beta"] == pytest.approx(beta, rel=0.03)
    assert got["r2"] > 0.98
    grid = [i / 1000 for i in range(1, 20000)]  # d in (0, 20): the true peak by brute force
    d_true = max(grid, key=lambda d: true_curve(form, alpha, beta, d))
    assert got["d_peak"] == pytest.approx(d_true, rel=0.05)
    assert got["kl_peak"] == pytest.approx(got["d_peak"] ** 2)


def test_exact_data_fit_exactly():
    ds = [0.5, 1.0, 2.0]
    got = fit("rl", ds, [true_curve("rl", 0.7, 0.3, d) for d in ds])
    assert (got["alpha"], got["beta"], got["r2"]) == pytest.approx((0.7, 0.3, 1.0), abs=1e-9)
    assert got["d_peak"] == pytest.approx(math.exp(0.7 / 0.3 - 1))


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_fit_with_intercept_recovers_the_start(form):
    rng = random.Random(1)
    ds = [0.1 + 0.05 * i for i in range(50)]
    rs = [0.65 + true_curve(form, 0.5, 0.4, d) + rng.gauss(0, 0.01) for d in ds]
    got = fit(form, ds, rs, intercept=True)
    assert (got["r0"], got["alpha"], got["beta"]) == pytest.approx((0.65, 0.5, 0.4), rel=0.05)
    assert fit(form, ds, rs)["r0"] == 0.0


def test_no_turn_no_peak():
    ds = [0.5, 1.0, 1.5, 2.0]
    got = fit("bon", ds, [0.4 * d + 0.1 * d * d for d in ds])  # gold still accelerating: beta < 0
    assert got["beta"] < 0 and got["d_peak"] == math.inf and got["kl_peak"] == math.inf
    assert peak("rl", 1.0, 0.0) == math.inf
    assert measured_peak([0.1, 0.2, 0.3], [0.0, 0.5, 0.2]) == (0.2, 0.5)


@pytest.mark.parametrize("form,alpha,beta", [("bon", -0.2, 0.3), ("bon", 0.0, 0.3), ("rl", -0.3, 0.4),
                                             ("rl", -0.5, 0.1)])
def test_peak_is_in_the_domain_when_alpha_is_negative(form, alpha, beta):
    """Gold falling from the start: best-of-n's vertex alpha / (2 beta) is at d <= 0, so the peak is d = 0; the RL
    form still rises first (d log d < 0 for d < 1). Both against a grid search over d >= 0 of the true curve."""
    ds = [0.1 * i for i in range(1, 31)]
    got = fit(form, ds, [true_curve(form, alpha, beta, d) for d in ds])
    grid = [0.0] + [i / 10000 for i in range(1, 50000)]  # d in [0, 5)
    d_true = max(grid, key=lambda d: true_curve(form, alpha, beta, d) if d > 0 else 0.0)
    assert got["d_peak"] == pytest.approx(d_true, abs=2e-4) and got["d_peak"] >= 0
    assert got["kl_peak"] == pytest.approx(got["d_peak"] ** 2, abs=1e-9)
    if form == "bon":
        assert got["d_peak"] == pytest.approx(0.0, abs=1e-9) and got["r_peak"] == pytest.approx(0.0, abs=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2 points"):
        fit("bon", [1.0], [0.1])
    with pytest.raises(ValueError, match=">= 0"):
        fit("rl", [-0.1, 1.0], [0.0, 0.1])
    with pytest.raises(ValueError, match="do not determine"):
        fit("bon", [1.0, 1.0, 1.0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="unknown functional form"):
        fit("ppo", [1.0, 2.0], [0.1, 0.2])
