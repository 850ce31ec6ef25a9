"""The gold-audit stop (minirlhf.monitor.GoldAuditStop) and its bench (bench/gold_audit.py), cheap (no training):

- the stop's decision at every iteration against the test recomputed from scratch with the statistics module
  (float64) on random audits of varying size, with and without a fall in gold;
- it never stops while every label agrees, and refuses a bad window or an empty audit by name;
- the bench's per-run evaluation, on a synthetic run auditing every rollout, against a plain loop over the same
  labels, and its gold peak against the definition written out here.

    python -m pytest tests/test_gold_audit.py -q
"""

import random
import statistics

import pytest

from bench.gold_audit import evaluate_run, truth
from minirlhf.monitor import GoldAuditStop


def decisions_from_scratch(audits, window, z, min_sd=0.05):
    """The rule of GoldAuditStop's docstring, recomputed from all the labels at every iteration."""
    out = []
    for t in range(1, len(audits) + 1):
        if t < 2 * window:
            out.append(False)
            continue
        def window_labels(end):
            return [x for a in audits[end - window:end] for x in a]
        best = max((window_labels(u) for u in range(window, t - window + 1)), key=statistics.fmean)
        current = window_labels(t)
        sd = max(statistics.stdev([x for a in audits[:t] for x in a]), min_sd)
        gap = statistics.fmean(best) - statistics.fmean(current)
        out.append(gap > z * sd * (1 / len(current) + 1 / len(best)) ** 0.5)
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("window,z", [(2, 2.0), (4, 3.0)])
def test_stop_matches_the_test_recomputed_from_scratch(seed, window, z):
    rng = random.Random(seed)
    turn = rng.randrange(8, 30)
    gold = [0.6 + 0.01 * min(t, turn) - (0.03 * (t - turn) if t > turn and seed % 2 else 0) for t in range(40)]
    audits = [[g + rng.gauss(0, 0.4) for _ in range(rng.randint(1, 5))] for g in gold]
    stop = GoldAuditStop(window, z)
    assert [stop(a) for a in audits] == decisions_from_scratch(audits, window, z)


def test_agreeing_labels_never_stop_and_bad_input_is_refused():
    stop = GoldAuditStop(2, 2.0)
    assert not any(stop([1.0, 1.0]) for _ in range(30))
    with pytest.raises(ValueError, match="window"):
        GoldAuditStop(0)
    with pytest.raises(ValueError, match="at least one audited gold score"):
        GoldAuditStop()([])


def test_run_evaluation_against_a_loop():
    rng = random.Random(0)
    B, n = 8, 40
    means = [0.5 + 0.02 * t if t < 15 else 0.8 - 0.04 * (t - 15) for t in range(n)]  # rises, peaks, falls
    golds = [[m + rng.gauss(0, 0.3) for _ in range(B)] for m in means]
    t = truth(golds)
    smoothed = [statistics.fmean(statistics.fmean(golds[j]) for j in range(max(0, i - 5), min(n, i + 6)))
                for i in range(n)]
    top = max(smoothed)
    assert t["peak_iter"] == max(i for i, g in enumerate(smoothed) if g >= top - 0.05) + 1
    assert t["over_optimised"] == (top - smoothed[-1] > 0.05)
    got = evaluate_run(golds, g=B, draws=3, window=4, z=3.0, seed=0)  # every rollout audited: one outcome
    stop = GoldAuditStop(4, 3.0)
    it = next((i + 1 for i, a in enumerate(golds) if stop(a)), None)
    assert got["stop_iters"] == [it] * 3 and it is not None
    assert got["at_or_before_peak"] == (it <= t["peak_iter"])
    assert got["gold_kept"] == pytest.approx(smoothed[it - 1])
