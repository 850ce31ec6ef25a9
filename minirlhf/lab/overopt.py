"""The functional forms of Gao, Schulman and Hilton (2022), "Scaling Laws for Reward Model Overoptimization",
fitted to gold scores measured against d = sqrt(KL(pi || pi_init)):

    best-of-n   R_bon(d) = d * (alpha - beta * d)          peaks at d* = alpha / (2 beta)
    RL          R_RL(d)  = d * (alpha - beta * log d)      peaks at d* = exp(alpha / beta - 1)

R is the gold score *gained* over the initial policy (R(0) = 0: the forms have no intercept). Both are linear
in (alpha, beta), so the fit is ordinary least squares on two features, solved by the 2 x 2 normal equations:
    best-of-n   R = alpha * d - beta * d^2
    RL          R = alpha * d - beta * d log d
With intercept=True the start is fitted too, R(d) = r0 + d * (...): for a PPO log, whose iterations are scored on
training prompts where no precise score of the initial policy is at hand (r0 is reported; the peak is unchanged).
R^2 is 1 - SS_res / SS_tot, SS_tot about the mean of R (it can go below 0 when the curve fits worse than a
constant). A beta < 0 means the fitted curve never turns down: no peak in the data (kl_peak = inf); a best-of-n
fit with alpha <= 0 falls from d = 0 on, and peaks there.
"""

import math


def _features(form, d):
    if form == "bon":
        return d, d * d
    if form == "rl":
        return d, (d * math.log(d) if d > 0 else 0.0)
    raise ValueError(f"unknown functional form {form!r}: 'bon' or 'rl'")


def predict(form, alpha, beta, d):
    """R(d) of the form with these coefficients."""
    f1, f2 = _features(form, d)
    return alpha * f1 - beta * f2


def fit(form, ds, rs, intercept=False):
    """Least-squares (alpha, beta) of R(d) to points (d_i, R_i) -> {"alpha", "beta", "r0", "r2", "d_peak",
    "kl_peak", "r_peak", "n_points"}. d_i >= 0 (sqrt of KL in nats), R_i gold gained over the start (or, with
    intercept, gold itself: r0 is then the fitted gold at d = 0)."""
    if len(ds) != len(rs) or len(ds) < 2:
        raise ValueError(f"fit needs at least 2 points (d, R) of equal count, got {len(ds)} and {len(rs)}")
    if any(d < 0 for d in ds):
        raise ValueError("d = sqrt(KL) must be >= 0 (clip a negative KL estimate to 0 before the square root)")
    rows = [_features(form, d) for d in ds]
    r0 = 0.0
    if intercept:  # centre features and targets: the slopes of the centred problem, then r0 from the means
        m1, m2, mr = (sum(x) / len(ds) for x in ([f1 for f1, _ in rows], [f2 for _, f2 in rows], rs))
        rows_c, rs_c = [(f1 - m1, f2 - m2) for f1, f2 in rows], [r - mr for r in rs]
        alpha, beta = fit_rows(rows_c, rs_c)
        r0 = mr - alpha * m1 + beta * m2
    else:
        alpha, beta = fit_rows(rows, rs)
    mean = sum(rs) / len(rs)
    ss_tot = sum((r - mean) ** 2 for r in rs)
    ss_res = sum((r - r0 - predict(form, alpha, beta, d)) ** 2 for d, r in zip(ds, rs))
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    d_peak = peak(form, alpha, beta)
    return {"alpha": alpha, "beta": beta, "r0": r0, "r2": r2, "d_peak": d_peak, "kl_peak": d_peak ** 2,
            "r_peak": r0 + predict(form, alpha, beta, d_peak) if math.isfinite(d_peak) else float("inf"),
            "n_points": len(ds)}


def fit_rows(rows, rs):
    """(alpha, beta) minimising sum (R - alpha f1 + beta f2)^2 over rows of features (f1, f2)."""
    # normal equations for R = a * f1 - b * f2  <=>  R = a * f1 + c * f2 with c = -b
    s11 = sum(f1 * f1 for f1, _ in rows)
    s12 = sum(f1 * f2 for f1, f2 in rows)
    s22 = sum(f2 * f2 for _, f2 in rows)
    t1 = sum(f1 * r for (f1, _), r in zip(rows, rs))
    t2 = sum(f2 * r for (_, f2), r in zip(rows, rs))
    det = s11 * s22 - s12 * s12
    if abs(det) < 1e-12 * max(s11 * s22, 1e-300):
        raise ValueError("the points do not determine both coefficients (all d equal, or all 0 / 1)")
    alpha = (t1 * s22 - t2 * s12) / det
    beta = -(s11 * t2 - s12 * t1) / det
    return alpha, beta


def peak(form, alpha, beta):
    """d >= 0 at which R(d) is largest: alpha / (2 beta) (best-of-n), exp(alpha / beta - 1) (RL); inf if the curve
    never turns down (beta < 0, or beta = 0 with alpha > 0).

    Best-of-n with alpha <= 0 falls from the start: its vertex alpha / (2 beta) is at d <= 0, outside the domain
    d >= 0, so the peak is d = 0 (the initial policy). The RL form's peak is always at d > 0 (its slope at
    d -> 0+ is +inf when beta > 0)."""
    if beta < 0 or (beta == 0 and alpha > 0):
        return float("inf")
    if beta == 0 or (form == "bon" and alpha <= 0):
        return 0.0
    return alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1)


def measured_peak(ds, golds):
    """The measured (not fitted) peak: (d, gold) of the point with the highest gold."""
    i = max(range(len(golds)), key=golds.__getitem__)
    return ds[i], golds[i]
