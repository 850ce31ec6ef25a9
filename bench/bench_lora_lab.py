"""LoRA against full fine-tuning on the lab, at equal iterations: PPO and DPO gold, KL to SFT, seconds per
iteration, over seeds.

    python bench/bench_lora_lab.py --phase prepare --seeds 0      # lab data, SFT, reward model (quickstart, 1 round)
    python bench/bench_lora_lab.py --phase runs --seeds 0         # PPO and DPO, full and LoRA, then the evaluation
    python bench/bench_lora_lab.py --phase table                  # the table of bench/results/lora_lab_cpu.json

Each phase of each seed is one command of a few minutes (resumable: a finished stage is skipped), so the whole
study splits into short pieces. For each seed, `quickstart.py --rounds 1 --ppo_iters 1` makes the lab data, the
SFT model (full fine-tuning, from scratch) and the reward model; then from that same SFT model and reward model:

    PPO       train_ppo.py, quickstart's settings (kl_coef 0.2), --num_iters ITERS, full fine-tuning
    PPO LoRA  the same + --lora_rank 8 --lora_alpha 16, learning rates x 10 (policy and value adapters)
    DPO       train_dpo.py on the same labelled pairs, --max_steps STEPS
    DPO LoRA  the same + --lora_rank 8 --lora_alpha 16, learning rate x 10

and `python -m minirlhf.lab.evaluate` scores the five policies (SFT, PPO, PPO LoRA, DPO, DPO LoRA) on the seed's
held-out prompts: gold, KL to SFT. Seconds per iteration: the median of a run's logged step times after the first.
Goal (issue 25): LoRA PPO's gold within the seeds' spread of full PPO's.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results", "lora_lab_cpu.json")
RANK, ALPHA, LR_SCALE = 8, 16, 10
PPO_LR, VALUE_LR, DPO_LR = 3e-5, 1e-4, 3e-5  # the scripts' defaults (full fine-tuning)
LORA = ["--lora_rank", str(RANK), "--lora_alpha", str(ALPHA)]
POLICIES = ("PPO", "PPO_LoRA", "DPO", "DPO_LoRA")


def run(cmd, log):
    print("$ " + " ".join(cmd), flush=True)
    with open(log, "a") as f:
        subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=True)


def prepare(out, seed):
    if not os.path.exists(f"{out}/rm/ckpt.pt"):
        run([sys.executable, "quickstart.py", "--seed", str(seed), "--out_dir", out, "--rounds", "1", "--ppo_iters", "1"],
            f"{out}.log")


def train(out, seed, name, iters, steps):
    d, data = f"{out}/{name.lower()}", f"{out}/data"
    if os.path.exists(f"{d}/done"):
        return
    lora = name.endswith("LoRA")
    scale = LR_SCALE if lora else 1
    if name.startswith("PPO"):  # quickstart's PPO stage, at --num_iters iters
        cmd = ["train_ppo.py", "--prompts", f"{data}/prompts_train.jsonl", "--eval_prompts", "", "--sft_ckpt",
               f"{out}/sft/ckpt.pt", "--rm_ckpt", f"{out}/rm/ckpt.pt", "--num_iters", str(iters), "--kl_coef", "0.2",
               "--lr", str(PPO_LR * scale), "--value_lr", str(VALUE_LR * scale), "--log_samples", "0"]
    else:
        cmd = ["train_dpo.py", "--train_data", f"{data}/prefs.jsonl", "--sft_ckpt", f"{out}/sft/ckpt.pt",
               "--max_steps", str(steps), "--lr", str(DPO_LR * scale), "--log_interval", "1"]
    cmd += ["--out_dir", d, "--overwrite", "true", "--seed", str(seed)] + (LORA if lora else [])
    run([sys.executable] + cmd, f"{d}.log")
    open(f"{d}/done", "w").close()


def seconds_per_iteration(log_path):
    stamps = [json.loads(line)["time/elapsed"] for line in open(log_path)]
    return round(statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:])), 3) if len(stamps) > 2 else None


def evaluate(out, seed):
    report = f"{out}/lora_report.json"
    if not os.path.exists(report):
        cols = [f"SFT={out}/sft/ckpt.pt"] + [f"{n}={out}/{n.lower()}/ckpt.pt" for n in POLICIES]
        run([sys.executable, "-m", "minirlhf.lab.evaluate", *cols, "--ref", f"{out}/sft/ckpt.pt", "--prompts",
             f"{out}/data/prompts_eval.jsonl", "--json", report, "--seed", str(seed)], f"{out}/evaluate.log")
    table = json.load(open(report))
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", choices=["prepare", "runs", "table"], required=True)
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--ppo_iters", type=int, default=20)
    p.add_argument("--dpo_steps", type=int, default=100)
    p.add_argument("--out_dir", default=os.path.join(ROOT, "out", "lora_lab"))
    args = p.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    results = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {"seeds": {}}
    for seed in args.seeds if args.phase != "table" else []:
        out = os.path.join(args.out_dir, f"seed{seed}")
        if args.phase == "prepare":
            prepare(out, seed)
            continue
        for name in POLICIES:
            train(out, seed, name, args.ppo_iters, args.dpo_steps)
        table = evaluate(out, seed)
        results["seeds"][str(seed)] = {
            name: dict(gold=table[name]["gold"], kl=table[name].get("kl"),
                       s_per_iter=None if name == "SFT" else seconds_per_iteration(f"{out}/{name.lower()}/log.jsonl"))
            for name in ("SFT",) + POLICIES}
        results.update(date=datetime.date.today().isoformat(), machine=f"{platform.machine()} CPU, {os.cpu_count()} "
                       f"cores, torch {__import__('torch').__version__}", ppo_iters=args.ppo_iters,
                       dpo_steps=args.dpo_steps, lora=dict(rank=RANK, alpha=ALPHA, lr_scale=LR_SCALE),
                       command="python bench/bench_lora_lab.py --phase runs --seeds S, one seed per call, under `quiet`")
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "w") as f:
            json.dump(results, f, indent=1)
    print(table_md(results))


def table_md(results):
    seeds = sorted(results["seeds"], key=int)
    if not seeds:
        return "no results yet"
    lines = ["| policy | " + " | ".join(f"gold s{s}" for s in seeds) + " | gold mean (min..max) | KL mean | s/iter |",
             "|---|" + "---|" * (len(seeds) + 3)]
    for name in ("SFT",) + POLICIES:
        golds = [results["seeds"][s][name]["gold"] for s in seeds]
        kls = [results["seeds"][s][name]["kl"] for s in seeds if results["seeds"][s][name]["kl"] is not None]
        its = [results["seeds"][s][name]["s_per_iter"] for s in seeds if results["seeds"][s][name]["s_per_iter"]]
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(f"{g:.3f}" for g in golds) +
                     f" | {statistics.mean(golds):.3f} ({min(golds):.3f}..{max(golds):.3f}) | "
                     f"{statistics.mean(kls):.3f} | " + (f"{statistics.median(its):.2f}" if its else "-") + " |")
    ppo = [results["seeds"][s]["PPO"]["gold"] for s in seeds]
    lora = statistics.mean(results["seeds"][s]["PPO_LoRA"]["gold"] for s in seeds)
    lines += ["", f"LoRA PPO mean gold {lora:.3f}; full PPO's seeds span {min(ppo):.3f}..{max(ppo):.3f}: "
              f"{'within' if min(ppo) <= lora <= max(ppo) else 'outside'} the spread.", "",
              f"{results['ppo_iters']} PPO iterations (kl_coef 0.2), {results['dpo_steps']} DPO steps; LoRA rank "
              f"{results['lora']['rank']}, alpha {results['lora']['alpha']}, learning rates x {results['lora']['lr_scale']}; "
              f"seconds per iteration: median after the first, each seed's runs alone on the machine; "
              f"{results['machine']}, {results['date']}; `{results['command']}`."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
