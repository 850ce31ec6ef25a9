"""Cheaper quick starts, and where each lost to SFT: the evidence behind the quick start's training budget.

    python bench/quickstart_cuts.py                       # run every cut for its seeds (minutes each)
    python bench/quickstart_cuts.py --reuse               # read the runs already in out/cuts/NAME/seedN
    python bench/quickstart_cuts.py --only micro16 --seeds 0 1 2
    python bench/quickstart_cuts.py --reuse --reevaluate  # the runs' reports again, as the quick start evaluates now

The README's table asks the quick start for PPO better than SFT on every row (gold per family, helpful accuracy,
refusals, hallucination, sycophancy, filler...) in every one of three seeds. Each cut below is the quick start
with less training, run as `python quickstart.py --seed N --out_dir out/cuts/NAME/seedN FLAGS`; a cut is ruled
out by the first seed on which some row moves the wrong way. The rows that did are recorded with both numbers.
Results: bench/results/quickstart_cuts_cpu.json (docs/speed.md's table is generated from it by
bench/docs_check.py). Wall times are not recorded: these runs shared the machine. --reevaluate reruns only a run's
evaluation stage (the quick start's, without the plot), so that runs trained before the report changed are judged
as the quick start judges now: EVAL_SAMPLES responses per held-out prompt.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from bench_lab import METRICS  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "quickstart_cuts_cpu.json")
EVAL_SAMPLES = 4  # quickstart.py's --eval_samples default

# name -> (quickstart.py flags, what it saves, the seeds run)
CUTS = {
    "sft16_rm32_ppo2": (["--sft_batch_size", "16", "--rm_batch_size", "32", "--ppo_epochs", "2"],
                        "half the SFT, reward-model and PPO-update work", [0]),
    "rm32_ppo2": (["--rm_batch_size", "32", "--ppo_epochs", "2"], "half the reward-model and PPO-update work", [0, 1, 2]),
    "rm200_100_rm32_ppo2": (["--rm_steps", "200", "--rm_steps_next", "100", "--rm_batch_size", "32", "--ppo_epochs", "2"],
                            "two thirds less reward-model work, half the PPO update", [0, 1, 2]),
    "micro16": (["--micro_batch_size", "16"], "the same work on 15 % fewer positions (length-sorted micro-batches; 3 % less time per SFT step)",
                [0, 1, 2]),
    "micro16_rm32_ppo2": (["--micro_batch_size", "16", "--rm_batch_size", "32", "--ppo_epochs", "2"],
                          "micro16, and half the reward-model and PPO-update work", [0]),
    "rm150_75": (["--rm_steps", "150", "--rm_steps_next", "75"], "half the reward-model work", [0, 1, 2]),
    "rm150_75_ppo2": (["--rm_steps", "150", "--rm_steps_next", "75", "--ppo_epochs", "2"],
                      "half the reward-model and PPO-update work", [0, 1, 2]),
}


def wrong_rows(report):
    """[(metric, SFT, PPO)] for every behaviour row on which PPO is not better than SFT."""
    return [(key, report["SFT"][key], report["PPO"][key]) for key, _, sign in METRICS
            if sign and not (report["PPO"][key] - report["SFT"][key]) * sign > 0]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="*", default=None, help="cut names (default: all)")
    p.add_argument("--seeds", type=int, nargs="*", default=None, help="default: each cut's own")
    p.add_argument("--reuse", action="store_true", help="read existing runs' report.json instead of running")
    p.add_argument("--reevaluate", action="store_true", help="rerun each run's evaluation stage into its report.json")
    args = p.parse_args()
    results = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {"cuts": {}}
    for name in args.only or CUTS:
        flags, saves, seeds = CUTS[name]
        entry = results["cuts"].setdefault(name, {"flags": flags, "saves": saves, "seeds": {}})
        for seed in args.seeds if args.seeds is not None else seeds:
            out = os.path.join("out", "cuts", name, f"seed{seed}")
            report_path = os.path.join(ROOT, out, "report.json")
            if not (args.reuse and os.path.exists(report_path)):
                subprocess.run([sys.executable, "quickstart.py", "--seed", str(seed), "--out_dir", out, *flags],
                               cwd=ROOT, check=True)
            elif args.reevaluate:
                subprocess.run([sys.executable, "-m", "minirlhf.lab.evaluate", f"SFT={out}/sft/ckpt.pt",
                                f"PPO={out}/ppo/ckpt.pt", "--rm", f"{out}/rm/ckpt.pt", "--ref", f"{out}/sft/ckpt.pt",
                                "--prompts", f"{out}/data/prompts_eval.jsonl", "--samples_per_prompt",
                                str(EVAL_SAMPLES), "--json", report_path], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            with open(report_path) as f:
                report = json.load(f)
            entry["seeds"][str(seed)] = {key: [report["SFT"][key], report["PPO"][key]] for key in ("gold", "gold/arithmetic")}
            entry["seeds"][str(seed)]["wrong_rows"] = wrong_rows(report)
            rows = ", ".join(f"{k} {s:.3f} -> {q:.3f}" for k, s, q in entry["seeds"][str(seed)]["wrong_rows"])
            print(f"{name} seed {seed}: gold {report['SFT']['gold']:.3f} -> {report['PPO']['gold']:.3f}; "
                  f"PPO not better on: {rows or 'none'}", flush=True)
    results["date"] = datetime.date.today().isoformat()
    results["eval_samples"] = EVAL_SAMPLES
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1)
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
