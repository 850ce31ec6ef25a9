"""How much of the quick start's report is the evaluation's own sampling noise?

    python bench/bench_eval_noise.py --run out/bench_lab/seed0      # about 3 minutes on 2 cores

The report (minirlhf/lab/evaluate.py) samples responses to the held-out prompts at temperature 0.7 and averages
the gold judge's verdicts. Those samples are random: evaluate the *same* SFT and PPO checkpoints again with
another sampling seed and every row moves. This script does exactly that, for --seeds sampling seeds and each
--samples per prompt, on the run's own held-out prompts, and prints per row the spread (max - min over the
sampling seeds) of SFT's value, of PPO's, and of PPO's gain over SFT; it writes
bench/results/eval_noise_cpu.json. A gain smaller than its spread here says nothing about the run: that is why
the quick start's report answers each prompt several times (quickstart.py --eval_samples).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench_lab import METRICS  # noqa: E402  (the README table's rows)
from minirlhf.lab import evaluate  # noqa: E402
from minirlhf.lab.world import FAMILIES  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="out/bench_lab/seed0", help="a quick start's out_dir (sft/, ppo/, data/)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="sampling seeds of the evaluation")
    p.add_argument("--samples", type=int, nargs="+", default=[1, 4], help="responses per held-out prompt")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "eval_noise_cpu.json"))
    args = p.parse_args()
    run = args.run
    reports = {}  # samples -> [report per seed]
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.samples:
            for seed in args.seeds:
                path = os.path.join(tmp, f"k{k}_s{seed}.json")
                evaluate.main([f"SFT={run}/sft/ckpt.pt", f"PPO={run}/ppo/ckpt.pt", "--prompts",
                               f"{run}/data/prompts_eval.jsonl", "--samples_per_prompt", str(k), "--seed", str(seed),
                               "--json", path])
                with open(path) as f:
                    reports.setdefault(k, []).append(json.load(f))
    with open(f"{run}/data/prompts_eval.jsonl") as f:
        n_prompts = sum(1 for _ in f)
    rows = []
    for key, label, sign in METRICS:
        if sign == 0 or key not in reports[args.samples[0]][0]["SFT"]:
            continue
        row = {"metric": key, "label": label.strip()}
        for k, runs in reports.items():
            sft = [r["SFT"][key] for r in runs]
            ppo = [r["PPO"][key] for r in runs]
            gain = [sign * (b - a) for a, b in zip(sft, ppo)]
            row[f"k{k}"] = {"sft_spread": max(sft) - min(sft), "ppo_spread": max(ppo) - min(ppo),
                            "gain_mean": statistics.fmean(gain), "gain_min": min(gain), "gain_max": max(gain),
                            "seeds_ppo_worse": sum(g <= 0 for g in gain)}
        rows.append(row)
    print(f"{args.run}: {len(args.seeds)} sampling seeds; spread = max - min over them; gain = PPO's move the right way")
    head = f"{'metric':<30}" + "".join(f"{f'k={k}: SFT spread':>18}{'PPO gain min..max':>20}{'worse':>7}" for k in reports)
    print(head)
    for row in rows:
        cells = "".join(f"{row[f'k{k}']['sft_spread']:>18.3f}{row[f'k{k}']['gain_min']:>+11.3f}..{row[f'k{k}']['gain_max']:<+7.3f}"
                        f"{row[f'k{k}']['seeds_ppo_worse']:>7}" for k in reports)
        print(f"{row['label']:<30}{cells}")
    with open(args.out, "w") as f:
        json.dump({"run": args.run, "seeds": args.seeds, "samples": args.samples, "rows": rows,
                   "prompts_per_family": n_prompts // len(FAMILIES),
                   "machine": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "date": datetime.date.today().isoformat()}, f, indent=1)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
