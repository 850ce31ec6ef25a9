"""bench/antioveropt_analysis.py's summaries over seeds, against hand values and plain loops, and its early-stop
iterations against EarlyStop fed the same series one iteration at a time, as train_ppo.py feeds it (cheap: no
training).

    python -m pytest tests/test_antioveropt_analysis.py -q
"""

import random
import statistics

import pytest

from bench.antioveropt_analysis import algorithm_summary, at, ensemble_summary, spread, summarise
from minirlhf.monitor import SIGNALS, EarlyStop
from minirlhf.stages import Stage


def curve(seconds, sqrt_kl, gold):
    return {"seconds": seconds, "sqrt_kl": sqrt_kl, "gold": gold, "proxy": gold, "iter": list(range(1, len(gold) + 1))}


def test_spread_is_mean_and_sample_sd():
    xs = [0.31, 0.52, 0.47, 0.9]
    s = spread(xs)
    assert s["mean"] == pytest.approx(statistics.fmean(xs)) and s["sd"] == pytest.approx(statistics.stdev(xs))
    assert (s["min"], s["max"], s["n"]) == (0.31, 0.9, 4)
    assert spread([0.4])["sd"] == 0.0 and spread([None]) is None


def test_at_reads_the_first_point_that_reaches_x():
    c = curve([1, 2, 3, 4], [0.1, 0.5, 0.4, 0.9], [0.8, 0.7, 0.6, 0.2])
    assert at(c, "sqrt_kl", 0.45) == 0.7  # first crossing, not the later dip back below
    assert at(c, "seconds", 3.5) == 0.2
    assert at(c, "seconds", 9) is None


def test_algorithm_summary_reads_each_seed_at_its_own_dpo_point():
    c0 = curve([10, 20, 30], [0.1, 0.3, 0.8], [0.70, 0.80, 0.40])
    c1 = curve([10, 20, 30], [0.2, 0.6, 1.0], [0.60, 0.50, 0.30])
    compare = [{"seed": 0, "algo": "ppo", "curve": c0, "gold_max": 0.8}, {"seed": 1, "algo": "ppo", "curve": c1, "gold_max": 0.6}]
    dpo = [{"seed": 0, "gold": 0.9, "sft_gold": 0.75, "sqrt_kl": 0.25, "seconds": 15},
           {"seed": 1, "gold": 0.8, "sft_gold": 0.75, "sqrt_kl": 0.5, "seconds": 25}]
    s = algorithm_summary(compare, dpo)
    # seed 0: 15 s -> the point at 20 s (0.80); sqrt(KL) 0.25 -> the point at 0.3 (0.80)
    # seed 1: 25 s -> the point at 30 s (0.30); sqrt(KL) 0.5 -> the point at 0.6 (0.50)
    assert s["ppo"]["gold_at_dpo_time"]["mean"] == pytest.approx((0.80 + 0.30) / 2)
    assert s["ppo"]["gold_at_dpo_kl"]["mean"] == pytest.approx((0.80 + 0.50) / 2)
    assert s["ppo"]["gold_max"]["sd"] == pytest.approx(statistics.stdev([0.8, 0.6]))
    assert s["dpo"]["gold_gain"]["mean"] == pytest.approx((0.15 + 0.05) / 2)


def test_ensemble_summary_compares_aggregates_at_each_seeds_smallest_final_kl():
    def run(agg, seed, kl, gold):
        return {"algo": "ppo", "noise": "flip", "kl_coef": 0.0, "agg": agg, "seed": seed, "curve": curve([1, 2, 3], kl, gold),
                "gold_start": gold[0], "gold_max": max(gold), "gold_end": gold[-1], "sqrt_kl_at_peak": kl[0],
                "sqrt_kl_end": kl[-1], "seconds": 3}
    rows = [run("single", 0, [0.5, 1.0, 2.0], [0.7, 0.5, 0.1]), run("min", 0, [0.4, 0.8, 1.5], [0.7, 0.6, 0.3]),
            run("single", 1, [0.5, 1.0, 3.0], [0.8, 0.6, 0.0]), run("min", 1, [0.5, 1.2, 2.5], [0.7, 0.65, 0.2]),
            {**run("single", 0, [0.1, 0.2, 0.3], [0.8, 0.9, 0.9]), "kl_coef": 0.2}]  # not a kl_coef 0 run: left out
    s = ensemble_summary(rows)
    # seed 0: equal sqrt(KL) 1.5 -> single 0.1 (at 2.0), min 0.3; seed 1: 2.5 -> single 0.0 (at 3.0), min 0.2
    assert s["flip/single"]["gold_at_equal_kl"]["mean"] == pytest.approx(0.05)
    assert s["flip/min"]["gold_at_equal_kl"]["mean"] == pytest.approx(0.25)
    assert s["flip/single"]["seeds"] == [0, 1] and "flip/mean" not in s


def early_stop_iteration(spec, values):
    """The 1-based iteration at which --early_stop SPEC stops a run logging these values (None: it never does)."""
    stop = EarlyStop(spec)
    signal = spec.rpartition(":")[0]
    for it, x in enumerate(values, start=1):
        if stop({signal: x}):
            return it
    return None


@pytest.mark.parametrize("seed", range(8))
def test_analysis_reports_the_iteration_at_which_early_stop_stops(seed):
    """Synthetic logs: KL flat then drifting up (from a random iteration), an entropy that wanders either way, an
    RM score with spikes; the analysis's firing iteration of every signal at both thresholds is EarlyStop's."""
    rng = random.Random(seed)
    n, turn = 40, rng.randrange(12, 35)
    kl = [0.05 + rng.gauss(0, 0.01) + max(0, i - turn) * rng.uniform(0.005, 0.05) for i in range(n)]
    entropy = [1.0 + rng.gauss(0, 0.05) + (0.3 * rng.choice([-1, 1]) if i > turn else 0) for i in range(n)]
    score = [rng.gauss(0, 0.1) + (1.0 if rng.random() < 0.15 else 0) for i in range(n)]
    log = [{"step": i + 1, "lab/gold": 0.8 - 0.01 * max(0, i - turn), "objective/kl": kl[i], "objective/rm_score": score[i],
            "policy/entropy": entropy[i], "time/elapsed": float(i)} for i in range(n)]
    row = summarise(Stage("run synthetic", [], meta={}), log)
    checked = 0
    for z, fired in row["firing"].items():
        for signal, it in fired.items():
            assert signal in SIGNALS
            assert it == early_stop_iteration(f"{signal}:{z}", [r[signal] for r in log]), (signal, z)
            checked += it is not None
    assert set(row["firing"][2.0]) == {"objective/kl", "objective/rm_score", "policy/entropy"}
    assert checked > 0  # some signal fires: the comparison is not only between Nones
