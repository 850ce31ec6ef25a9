"""The whole RLHF pipeline on the lab, on a CPU, in a few minutes: the README's main command.

    python quickstart.py                       # lab data -> SFT -> labelled SFT samples -> RM -> PPO -> report
    python quickstart.py --bias 1.0            # biased annotators who like filler: watch the proxy rise, gold fall
    python quickstart.py --out_dir out/qs2 --sft_steps 600 --ppo_iters 80   # longer

Each stage is one of the project's own commands, printed before it runs, so this file is also the recipe:
copy a line to rerun or change one stage. Outputs land in out_dir (default out/quickstart):
data/ (JSONL), sft/, rm/, ppo/ (ckpt.pt + log.jsonl each), report.json, gold_vs_kl.png.
A stage whose checkpoint already exists is skipped, so an interrupted quick start continues where it stopped
(delete out_dir to start over).
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.abspath(__file__))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="out/quickstart")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="small", help="model preset for SFT from scratch (tiny, small)")
    p.add_argument("--sft_steps", type=int, default=1000)
    p.add_argument("--sft_lr", type=float, default=2e-3)
    p.add_argument("--samples_per_prompt", type=int, default=4, help="SFT samples per prompt to pair up for labelling")
    p.add_argument("--label_prompts", type=int, default=1200, help="prompts whose samples are labelled")
    p.add_argument("--temperature", type=float, default=0.1, help="annotator noise (0 = always agree with gold)")
    p.add_argument("--flip_rate", type=float, default=0.0, help="annotator label flips")
    p.add_argument("--bias", type=float, default=0.0, help="annotator liking for filler (> 0: reward hacking)")
    p.add_argument("--families", default="", help="annotator coverage, comma-separated ('' = all families)")
    p.add_argument("--rm_steps", type=int, default=400)
    p.add_argument("--ppo_iters", type=int, default=40)
    p.add_argument("--kl_coef", type=float, default=0.2,
                   help="PPO's beta; higher than the usual 0.05 as a guard against this small reward model's blind "
                        "spots, which PPO can find at 0.05 (see the README)")
    args = p.parse_args()

    out = args.out_dir
    data = os.path.join(out, "data")
    py = sys.executable
    stages = [  # (name, the file whose existence means "done", command)
        ("lab data", f"{data}/sft.jsonl",
         [py, "-m", "minirlhf.lab.make_data", "--out_dir", data, "--seed", str(args.seed), "--n_eval_prompts", "100"]),
        ("SFT", f"{out}/sft/ckpt.pt",
         [py, "train_sft.py", "--train_data", f"{data}/sft.jsonl", "--eval_data", f"{data}/sft_eval.jsonl",
          "--out_dir", f"{out}/sft", "--init_from", f"scratch:{args.model}", "--max_steps", str(args.sft_steps),
          "--lr", str(args.sft_lr), "--log_interval", "100", "--eval_interval", "500", "--ckpt_interval", "500", "--seed", str(args.seed)]),
        ("sample pairs", f"{data}/samples.jsonl",
         [py, "-m", "minirlhf.lab.annotate", "sample", "--ckpt", f"{out}/sft/ckpt.pt",
          "--prompts", f"{data}/prompts_train.jsonl", "--out", f"{data}/samples.jsonl",
          "--k", str(args.samples_per_prompt), "--n_prompts", str(args.label_prompts), "--temperature", "1.0",
          "--seed", str(args.seed)]),
        ("label pairs", f"{data}/prefs.jsonl",
         [py, "-m", "minirlhf.lab.annotate", "label", "--samples", f"{data}/samples.jsonl",
          "--out", f"{data}/prefs.jsonl", "--labeller", "sim", "--temperature", str(args.temperature),
          "--flip_rate", str(args.flip_rate), "--bias", str(args.bias), "--seed", str(args.seed)]
         + (["--families", args.families] if args.families else [])),
        ("reward model", f"{out}/rm/ckpt.pt",
         [py, "train_rm.py", "--train_data", f"{data}/prefs.jsonl", "--sft_ckpt", f"{out}/sft/ckpt.pt",
          "--out_dir", f"{out}/rm", "--max_steps", str(args.rm_steps), "--batch_size", "64", "--micro_batch_size", "64",
          "--log_interval", "50", "--eval_interval", "100", "--ckpt_interval", "1000", "--seed", str(args.seed)]),
        ("PPO", f"{out}/ppo/ckpt.pt",
         [py, "train_ppo.py", "--prompts", f"{data}/prompts_train.jsonl", "--eval_prompts", f"{data}/prompts_eval.jsonl",
          "--sft_ckpt", f"{out}/sft/ckpt.pt", "--rm_ckpt", f"{out}/rm/ckpt.pt", "--out_dir", f"{out}/ppo",
          "--num_iters", str(args.ppo_iters), "--kl_coef", str(args.kl_coef), "--eval_interval", "20",
          "--ckpt_interval", "10", "--log_samples", "1", "--seed", str(args.seed)]),
        ("evaluation", f"{out}/report.json",
         [py, "-m", "minirlhf.lab.evaluate", f"SFT={out}/sft/ckpt.pt", f"PPO={out}/ppo/ckpt.pt",
          "--rm", f"{out}/rm/ckpt.pt", "--ref", f"{out}/sft/ckpt.pt", "--prompts", f"{data}/prompts_eval.jsonl",
          "--pairs", f"{data}/prefs.jsonl", "--json", f"{out}/report.json",
          "--plot", f"{out}/ppo/log.jsonl", "--plot_out", f"{out}/gold_vs_kl.png"]),
    ]
    timings = {}
    t_start = time.time()
    for name, done_file, cmd in stages:
        print(f"\n=== {name}\n$ {' '.join(cmd)}", flush=True)
        if os.path.exists(done_file):
            print(f"(skipped: {done_file} exists)")
            continue
        t0 = time.time()
        subprocess.run(cmd, cwd=ROOT, check=True)
        timings[name] = round(time.time() - t0, 1)
    total = time.time() - t_start
    print("\n=== wall time per stage (s): " + ", ".join(f"{k} {v}" for k, v in timings.items())
          + f"; total {total:.0f} s")
    with open(os.path.join(out, "timings.json"), "w") as f:
        json.dump({**timings, "total": round(total, 1)}, f)


if __name__ == "__main__":
    main()
