"""A stop that spends a few gold labels: how many per iteration buy a stop at the gold peak, on the study's PPO runs?

    python bench/gold_audit.py --study out/study_seeds            # every long PPO run of that study (study.py)
    python bench/gold_audit.py --study out/study_seeds --draws 200 --json bench/results/gold_audit_cpu.json

Real teams watch a small human evaluation of the policy's own samples during training. Here people are the gold
judge, and the audit is g of each iteration's B rollouts, graded and fed to minirlhf.monitor.GoldAuditStop (a
one-sided test of the audited mean of the last `window` iterations against its best earlier window). Offline and
cheap: each long PPO run of `study.py` wrote the gold score of every rollout of every iteration
(rollout_gold.jsonl, `study.py snapshots`) beside its log; no model runs here.

Definitions (those of bench/antioveropt_analysis.py, on the runs' own rollouts):
  gold curve      the mean gold of all B rollouts of each iteration, smoothed by a centred moving average of 11
  gold peak       the last iteration at which the smoothed gold is within 0.05 of its maximum
  over-optimised  the smoothed gold at the end lies more than 0.05 below its maximum; calm: the other runs
  audit           g of the B rollouts of each iteration, drawn without replacement; `draws` independent audits
                  per run and g (g = B: every rollout, one outcome). The audited labels are among those that make
                  the gold curve (at g = B, all of them): the audit sees the truth's data, only causally.
  at the peak     the stop's iteration <= the gold peak's (what the goal asks for in over-optimised runs)
  false alarm     a stop in a calm run
  gold kept       the smoothed gold at the stop's iteration (the last iteration's when it never stops)
  z               set before looking at any run: the (1 - alpha) quantile of the largest statistic the test
                  reaches over a run of the same length whose gold never moves (labels i.i.d. normal, g = 4),
                  so that such a run is stopped with probability alpha (`calibrate`)
Beside it: --early_stop objective/kl:2 (EarlyStop on the log, the best label-free stop measured), no stop, and
an oracle that stops at the gold maximum.
"""

import argparse
import glob
import json
import os
import platform
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.antioveropt_analysis import DROP, smooth  # noqa: E402
from minirlhf.monitor import EarlyStop, GoldAuditStop  # noqa: E402

GS = (1, 2, 4, 8, 16, 32)  # labels per iteration
WINDOWS = (2, 4, 8)  # iterations per window of the test
ALPHA = 0.05  # false-alarm rate on a run whose gold never moves, at which z is set
LABEL_FREE = "objective/kl:2"


def truth(golds):
    """The gold curve of a run (golds: per iteration, the B rollouts' scores) -> peak, over-optimised, curve."""
    curve = smooth([statistics.fmean(g) for g in golds])
    top = max(curve)
    return {"curve": curve, "gold_max": top, "gold_end": curve[-1], "max_iter": curve.index(top) + 1,
            "peak_iter": max(i for i, x in enumerate(curve) if x >= top - DROP) + 1,
            "over_optimised": top - curve[-1] > DROP}


def calibrate(n_iters, window, alpha=ALPHA, g=4, reps=2000, seed=0):
    """z at which GoldAuditStop stops a run of n_iters iterations whose gold never moves with probability alpha."""
    rng = random.Random(seed)
    largest = []
    for _ in range(reps):
        stop, top = GoldAuditStop(window, float("inf")), -float("inf")
        for _ in range(n_iters):
            stop([rng.gauss(0.0, 1.0) for _ in range(g)])
            if stop.statistic is not None:
                top = max(top, stop.statistic)
        largest.append(top)
    largest.sort()
    if largest[-1] == -float("inf"):
        raise ValueError(f"calibrate: runs of {n_iters} iterations are too short for windows of {window} (need {2 * window})")
    return largest[int((1 - alpha) * reps)]


def labels_needed(golds, t, z=(1.645, 3.5)):
    """What a stop at the peak would need: between the gold maximum and the gold peak (the last iteration within DROP
    of it) there are w = peak - max iterations, and by the peak gold has fallen about DROP. A window of those w
    iterations, set against an equal one before the maximum, shows a fall of DROP at z standard errors when
    DROP >= z * s * sqrt(2 / (g w)), s the spread of one label within an iteration: g >= 2 (z s / DROP)^2 / w labels
    per iteration. z 1.645 is one comparison at 5 %; 3.5 about what a whole run of comparisons needs (calibrate)."""
    sd = statistics.fmean(statistics.pvariance(g) for g in golds) ** 0.5  # within-iteration spread of one label
    w = max(t["peak_iter"] - t["max_iter"], 1)
    return {"label_sd": sd, "iters_max_to_peak": w,
            "labels_needed": {str(zz): 2 * (zz * sd / DROP) ** 2 / w for zz in z}}


def evaluate_run(golds, g, draws, window, z, seed):
    """`draws` random audits of g labels per iteration of one run -> stop iterations and what they came to."""
    t, rng, B = truth(golds), random.Random(seed), len(golds[0])
    stops = []
    for _ in range(draws):
        stop = GoldAuditStop(window, z)
        stops.append(next((i + 1 for i, labels in enumerate(golds) if stop(rng.sample(labels, g) if g < B else labels)),
                          None))
    fired = [s for s in stops if s is not None]
    return {"stop_iters": stops, "stopped": len(fired) / draws,
            "at_or_before_peak": sum(s <= t["peak_iter"] for s in fired) / draws,
            "median_lag": statistics.median(s - t["peak_iter"] for s in fired) if fired else None,
            "gold_kept": statistics.fmean(t["curve"][(s or len(golds)) - 1] for s in stops),
            "labels_spent": statistics.fmean(g * (s or len(golds)) for s in stops)}


def label_free_stop(log, spec=LABEL_FREE):
    """The iteration at which --early_stop SPEC stops this logged run (None: never)."""
    stop, signal = EarlyStop(spec), spec.rpartition(":")[0]
    return next((r["step"] for r in log if stop({signal: r[signal]})), None)


def read_run(folder):
    with open(f"{folder}/rollout_gold.jsonl") as f:
        golds = [json.loads(line)["gold"] for line in f]
    with open(f"{folder}/log.jsonl") as f:
        log = [json.loads(line) for line in f]
    return golds, log


def analyse(study, draws, seed=0):
    runs = []
    for folder in sorted(glob.glob(f"{study}/ppo/*_long")):
        if not os.path.exists(f"{folder}/rollout_gold.jsonl"):
            continue
        golds, log = read_run(folder)
        if len(log) != len(golds):
            continue  # unfinished
        name = os.path.basename(folder)
        t = truth(golds)
        kl_stop = label_free_stop(log)
        runs.append({"name": name, "iters": len(golds), "rollouts": len(golds[0]), **{k: v for k, v in t.items() if k != "curve"},
                     "curve": t["curve"], "label_free_stop": kl_stop,
                     "label_free_gold_kept": t["curve"][(kl_stop or len(golds)) - 1], **labels_needed(golds, t)})
    if not runs:
        raise SystemExit(f"no finished long PPO run with rollout_gold.jsonl under {study}/ppo")
    longest = max(r["iters"] for r in runs)
    runs = [r for r in runs if r["iters"] == longest]  # a run still going has fewer iterations
    n_iters, B = runs[0]["iters"], runs[0]["rollouts"]
    zs = {w: calibrate(n_iters, w) for w in WINDOWS}
    print(f"{len(runs)} runs, {n_iters} iterations of {B} rollouts; z at alpha {ALPHA}: "
          + ", ".join(f"window {w}: {z:.2f}" for w, z in zs.items()))
    over = [r for r in runs if r["over_optimised"]]
    calm = [r for r in runs if not r["over_optimised"]]
    table = []
    for w in WINDOWS:
        for g in [g for g in GS if g <= B]:
            per_run = {}
            for k, r in enumerate(runs):
                golds, _ = read_run(f"{study}/ppo/{r['name']}")
                per_run[r["name"]] = evaluate_run(golds, g, draws if g < B else 1, w, zs[w], seed + 1000 * k + g)
            row = {"window": w, "z": zs[w], "g": g,
                   "at_or_before_peak": statistics.fmean(per_run[r["name"]]["at_or_before_peak"] for r in over) if over else None,
                   "stopped_over": statistics.fmean(per_run[r["name"]]["stopped"] for r in over) if over else None,
                   "median_lag": statistics.median(x for r in over if (x := per_run[r["name"]]["median_lag"]) is not None)
                   if any(per_run[r["name"]]["median_lag"] is not None for r in over) else None,
                   "false_alarms": statistics.fmean(per_run[r["name"]]["stopped"] for r in calm) if calm else None,
                   "gold_kept": statistics.fmean(p["gold_kept"] for p in per_run.values()),
                   "labels_spent": statistics.fmean(p["labels_spent"] for p in per_run.values()),
                   "runs": {name: {k: v for k, v in p.items() if k != "stop_iters"} for name, p in per_run.items()}}
            table.append(row)
            print(f"window {w} g {g:>2}: at/before peak {_pct(row['at_or_before_peak'])} of over-optimised, "
                  f"stopped {_pct(row['stopped_over'])}, median lag {row['median_lag']}, false alarms "
                  f"{_pct(row['false_alarms'])}, gold kept {row['gold_kept']:.3f}, labels {row['labels_spent']:.0f}")
    yardsticks = {
        "no stop": statistics.fmean(r["gold_end"] for r in runs),
        "oracle (the gold maximum)": statistics.fmean(r["gold_max"] for r in runs),
        f"--early_stop {LABEL_FREE}": statistics.fmean(r["label_free_gold_kept"] for r in runs)}
    kl = {"at_or_before_peak": sum(r["label_free_stop"] is not None and r["label_free_stop"] <= r["peak_iter"] for r in over),
          "stopped_over": sum(r["label_free_stop"] is not None for r in over), "over_runs": len(over),
          "false_alarms": sum(r["label_free_stop"] is not None for r in calm), "calm_runs": len(calm),
          "lags": {r["name"]: r["label_free_stop"] - r["peak_iter"] for r in over if r["label_free_stop"] is not None}}
    print(f"{len(over)} over-optimised runs, {len(calm)} calm: " + ", ".join(f"{k} {v:.3f}" for k, v in yardsticks.items()))
    print(f"--early_stop {LABEL_FREE}: at/before the peak {kl['at_or_before_peak']}/{len(over)}, stopped "
          f"{kl['stopped_over']}/{len(over)}, lags {kl['lags']}, false alarms {kl['false_alarms']}/{len(calm)}")
    return {"runs": runs, "z": {str(w): z for w, z in zs.items()}, "alpha": ALPHA, "draws": draws, "table": table,
            "yardsticks": yardsticks, "label_free": kl}


def markdown(res):
    """The results page's tables from the results JSON."""
    pct = lambda x: "-" if x is None else f"{100 * x:.0f} %"  # noqa: E731
    over = sum(r["over_optimised"] for r in res["runs"])
    lines = ["| run | iterations x rollouts | over-optimised | gold max (iteration) | gold peak iteration | gold at end "
             f"| `--early_stop {LABEL_FREE}` stops at | spread of one label | labels per iteration a stop at the peak "
             "needs (z 1.645 / 3.5) |", "|" + "---|" * 9]
    for r in res["runs"]:
        need = " / ".join(f"{v:,.0f}" for v in r["labels_needed"].values()) if r["over_optimised"] else ""
        lines.append(f"| {r['name']} | {r['iters']} x {r['rollouts']} | {'yes' if r['over_optimised'] else 'no'} "
                     f"| {r['gold_max']:.3f} ({r['max_iter']}) | {r['peak_iter']} | {r['gold_end']:.3f} "
                     f"| {r['label_free_stop'] or '-'} | {r['label_sd']:.2f} | {need} |")
    kl = res["label_free"]
    lines += ["", f"Gold-audit stop, {res['draws']} random audits per run and g ({over} over-optimised runs, "
              f"{len(res['runs']) - over} calm; z set for {pct(res['alpha'])} false alarms on a run whose gold never moves):", "",
              "| stop | labels per iteration | labels per run (mean) | at or before the gold peak (over-optimised) "
              "| stopped at all (over-optimised) | median lag after the peak (iterations) | false alarms (calm) "
              "| mean gold kept (all runs) |", "|" + "---|" * 8]
    for row in res["table"]:
        lag = "-" if row["median_lag"] is None else f"{row['median_lag']:+g}"
        lines.append(f"| audit, window {row['window']}, z {row['z']:.2f} | {row['g']} | {row['labels_spent']:.0f} "
                     f"| {pct(row['at_or_before_peak'])} | {pct(row['stopped_over'])} | {lag} | {pct(row['false_alarms'])} "
                     f"| {row['gold_kept']:.3f} |")
    lags = sorted(kl["lags"].values())
    med = f"{statistics.median(lags):+g}" if lags else "-"
    lines.append(f"| `--early_stop {LABEL_FREE}` (no labels) | 0 | 0 | {kl['at_or_before_peak']}/{kl['over_runs']} "
                 f"| {kl['stopped_over']}/{kl['over_runs']} | {med} | {kl['false_alarms']}/{kl['calm_runs']} "
                 f"| {res['yardsticks'][f'--early_stop {LABEL_FREE}']:.3f} |")
    lines.append(f"| no stop / oracle at the gold maximum | | | | | | | {res['yardsticks']['no stop']:.3f} / "
                 f"{res['yardsticks']['oracle (the gold maximum)']:.3f} |")
    return "\n".join(lines)


def _pct(x):
    return "-" if x is None else f"{100 * x:.0f} %"


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, w in enumerate(WINDOWS):
        rows = [r for r in res["table"] if r["window"] == w]
        gs = [r["g"] for r in rows]
        a.plot(gs, [r["gold_kept"] for r in rows], "o-", color=f"C{i}", label=f"gold audit, window {w} (z {res['z'][str(w)]:.2f})")
        b.plot(gs, [r["at_or_before_peak"] for r in rows], "o-", color=f"C{i}", label=f"at/before the peak, window {w}")
        b.plot(gs, [r["false_alarms"] for r in rows], "x--", color=f"C{i}", label=f"false alarms (calm runs), window {w}")
    for (name, v), ls in zip(res["yardsticks"].items(), (":", "-.", "--")):
        a.axhline(v, color="grey", ls=ls, lw=1, label=name)
    b.axhline(0.8, color="k", lw=0.5)
    b.axhline(0.1, color="k", lw=0.5)
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("gold labels per iteration (g)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    a.set_ylabel("mean gold kept (all runs)")
    b.set_ylabel("fraction of runs x audits")
    a.set_title("gold kept against labels spent")
    b.set_title("stops at or before the gold peak; false alarms")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default="out/study_seeds", help="a study.py out_dir with long PPO runs")
    p.add_argument("--draws", type=int, default=200, help="random audits per run and g")
    p.add_argument("--note", default="", help="how the runs were made, kept in the JSON")
    p.add_argument("--json", default="bench/results/gold_audit_cpu.json")
    p.add_argument("--plot", default="bench/results/gold_audit_cpu.png")
    a = p.parse_args()
    res = analyse(a.study, a.draws)
    res.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine=platform.platform(), study=a.study,
               note=a.note, command=" ".join(["python", "bench/gold_audit.py", *sys.argv[1:]]))
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)
    plot(res, a.plot)
    print(f"wrote {a.json} and {a.plot}")


if __name__ == "__main__":
    main()
