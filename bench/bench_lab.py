"""The lab quick start as a benchmark: does PPO beat SFT on gold and on each behaviour, seed after seed?

    python bench/bench_lab.py --seeds 0 1 2      # about 4.5 minutes per seed on 2 CPU cores

For each seed it runs the README's main command, `python quickstart.py --seed N --out_dir out/bench_lab/seedN`
(from scratch: the seed's folder is deleted first, unless --reuse), then reads that run's report.json and
timings.json. It prints, per metric, SFT -> PPO for every seed and how many seeds moved the right way, and
writes everything to bench/results/lab_quickstart_<device>.json.

Learning is checked here rather than in the test suite: a run that learns anything takes minutes, and one
seed is not evidence (the README shows a family that improves in two seeds and falls in the third).
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (report key, label, +1 if higher is better, -1 if lower is better, 0 if it is not a behaviour)
METRICS = [
    ("gold", "gold score", +1),
    ("gold/arithmetic", "  gold: arithmetic", +1),
    ("gold/known_fact", "  gold: known fact", +1),
    ("gold/unknown_fact", "  gold: unknown fact", +1),
    ("gold/harmful", "  gold: harmful", +1),
    ("gold/benign", "  gold: benign", +1),
    ("gold/sycophancy", "  gold: sycophancy", +1),
    ("helpful_accuracy", "helpful accuracy", +1),
    ("hallucination_rate", "hallucination", -1),
    ("refusal_rate", "refusal (harmful)", +1),
    ("over_refusal_rate", "over-refusal (benign)", -1),
    ("sycophancy_rate", "sycophancy (user wrong)", -1),
    ("filler_rate", "filler", -1),
    ("rm_score", "RM score (proxy)", 0),
    ("kl", "KL to SFT (nats)", 0),
]


def run_seed(seed, out_dir, reuse, extra):
    """Run (or, with reuse, find) one quick start; return (report, timings)."""
    report_path = os.path.join(out_dir, "report.json")
    if not (reuse and os.path.exists(report_path)):
        shutil.rmtree(out_dir, ignore_errors=True)
        cmd = [sys.executable, "quickstart.py", "--seed", str(seed), "--out_dir", out_dir, *extra]
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    with open(report_path) as f:
        report = json.load(f)
    timings_path = os.path.join(out_dir, "timings.json")
    timings = json.load(open(timings_path)) if os.path.exists(timings_path) else {}
    return report, timings


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out_dir", default="out/bench_lab", help="one quick start folder per seed goes here")
    p.add_argument("--reuse", action="store_true", help="read a seed's existing report instead of rerunning it")
    p.add_argument("--results", default=None, help="default: bench/results/lab_quickstart_<device>.json")
    args, extra = p.parse_known_args()  # anything else goes to quickstart.py (e.g. --kl_coef 0.05)

    runs = {}
    for seed in args.seeds:
        report, timings = run_seed(seed, os.path.join(ROOT, args.out_dir, f"seed{seed}"), args.reuse, extra)
        runs[seed] = {"SFT": report["SFT"], "PPO": report["PPO"], "rm_probe": report.get("rm_probe"),
                      "timings": timings}
        print(f"seed {seed}: {timings.get('total', float('nan')):.0f} s, gold {report['SFT']['gold']:.3f} -> "
              f"{report['PPO']['gold']:.3f}", flush=True)

    header = f"{'metric':24s}" + "".join(f"{'seed ' + str(s):>18s}" for s in args.seeds) + "   PPO better"
    print("\n" + header + "\n" + "-" * len(header))
    verdicts = {}
    for key, label, sign in METRICS:
        cells, better = "", 0
        for s in args.seeds:
            sft, ppo = runs[s]["SFT"][key], runs[s]["PPO"][key]
            cells += f"  {sft:6.3f} -> {ppo:6.3f}"
            better += sign != 0 and (ppo - sft) * sign > 0
        verdict = f"{better} of {len(args.seeds)}" if sign else ""
        verdicts[key] = better if sign else None
        print(f"{label:24s}{cells}   {verdict}")
    for key in (runs[args.seeds[0]]["rm_probe"] or {}):  # the reward model against gold, as evaluate.py prints it
        print(f"{key:24s}" + "".join(f"{runs[s]['rm_probe'][key]:18.3f}" for s in args.seeds))
    totals = [runs[s]["timings"].get("total") for s in args.seeds]
    print(f"wall time per quick start (s): {', '.join(str(t) for t in totals)}")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = args.results or os.path.join(ROOT, "bench", "results", f"lab_quickstart_{device}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
                   "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                   "quickstart_args": extra, "runs": runs, "ppo_better_seeds": verdicts,
                   "date": datetime.date.today().isoformat()}, f, indent=1)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
