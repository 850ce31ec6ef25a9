"""SFT vs PPO vs DPO vs DPO on AI feedback, on the lab: gold score, every behaviour, and the wall time of each.

    python quickstart.py && python compare.py                # reuses the quick start's data, SFT, RM and PPO
    python compare.py --beta 0.05 --out_dir out/compare_b005  # another DPO setting: a new out_dir
    python compare.py --loss ipo --out_dir out/compare_ipo    # IPO instead of DPO

The stages, each one of the project's own commands, printed before it runs; a stage whose output exists is
skipped. Without the quick start's outputs (data/prefs.jsonl, sft/, rm/, ppo/ in --quickstart_dir), it first
runs `quickstart.py --out_dir QUICKSTART_DIR` (about 4 minutes on 2 CPU cores); the rest takes about 2 more:

    DPO                train_dpo.py on the human (simulated annotator) labels, starting from the SFT model
    AI samples         new SFT samples (another seed) on the same prompts as the human labels
    AI labels          those pairs labelled by the reward model instead of the annotator (annotate label
                       --labeller rm): AI feedback, with an RM trained on human labels (the quick
                       start's first-round RM, which saw the same labels as DPO)
    DPO-AI             train_dpo.py on the AI labels, with the same settings as DPO

Then every policy answers the same held-out prompts and the gold judge grades them. Wall time per column is the
time of the stages that column needs beyond SFT and the human labels: PPO = every round's RM, PPO and (after
the first) sampling and labelling, DPO = DPO, DPO-AI = first RM + AI labelling + DPO (times of reused stages
come from the quick start's timings or logs). PPO's later rounds get labels of their own samples that DPO
does not see: the comparison says so when it prints the labels.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.abspath(__file__))


def logged_time(out_dir):
    """Wall time of a finished training run, from the last line of its log (0 if there is none)."""
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.exists(path):
        return 0.0
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    return json.loads(lines[-1]).get("time/elapsed", 0.0) if lines else 0.0


def gold_agreement(path):
    """Fraction of preference rows whose chosen response the gold judge prefers (pairs gold ties are left out)."""
    from minirlhf.data import PREFERENCE_FIELDS, read_jsonl
    from minirlhf.lab import gold
    agree = disagree = 0
    for r in read_jsonl(path, PREFERENCE_FIELDS):
        margin = (gold(r["prompt"], r["chosen"], r.get("chosen_ended", True)).score
                  - gold(r["prompt"], r["rejected"], r.get("rejected_ended", True)).score)
        agree, disagree = agree + (margin > 0), disagree + (margin < 0)
    return agree / max(agree + disagree, 1), agree + disagree


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quickstart_dir", default="out/quickstart", help="reuse its data/, sft/, rm/, ppo/ if present")
    p.add_argument("--out_dir", default="out/compare", help="DPO runs, AI labels, stages not found above, report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label_prompts", type=int, default=1200, help="prompts whose samples the AI labels (as the quick start's)")
    p.add_argument("--samples_per_prompt", type=int, default=4, help="k samples per prompt: k(k-1)/2 pairs each")
    p.add_argument("--loss", default="dpo", help="dpo or ipo")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--dpo_steps", type=int, default=150)
    p.add_argument("--dpo_lr", type=float, default=3e-5)
    args = p.parse_args()

    qs, out, py, seed = args.quickstart_dir, args.out_dir, sys.executable, str(args.seed)
    have = lambda rel: os.path.exists(os.path.join(qs, rel))  # noqa: E731
    if not all(have(f) for f in ("data/prefs.jsonl", "sft/ckpt.pt", "rm/ckpt.pt", "ppo/ckpt.pt")):
        cmd = [py, "quickstart.py", "--out_dir", qs, "--seed", seed]
        print(f"=== the quick start first\n$ {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    data = f"{qs}/data"
    sft, rm, ppo = f"{qs}/sft/ckpt.pt", f"{qs}/rm/ckpt.pt", f"{qs}/ppo/ckpt.pt"
    # the AI labeller is the first round's reward model: trained on the same human labels DPO learns from
    rm_ai = f"{qs}/round1/rm/ckpt.pt" if have("round1/rm/ckpt.pt") else rm
    print(f"SFT, human labels, RM and PPO from {qs}/; DPO runs and AI labels in {out}/")

    def dpo(train_data, out_dir):
        return [py, "train_dpo.py", "--train_data", train_data, "--sft_ckpt", sft, "--out_dir", out_dir,
                "--loss", args.loss, "--beta", str(args.beta), "--max_steps", str(args.dpo_steps),
                "--lr", str(args.dpo_lr), "--log_interval", "25", "--eval_interval", "50", "--ckpt_interval", "1000",
                "--seed", seed]

    stages = [  # (name, the file whose existence means "done", command)
        ("DPO", f"{out}/dpo/ckpt.pt", dpo(f"{data}/prefs.jsonl", f"{out}/dpo")),
        # AI feedback: fresh samples (another seed) on the same prompts, labelled by the reward model
        ("AI samples", f"{out}/samples_ai.jsonl",
         [py, "-m", "minirlhf.lab.annotate", "sample", "--ckpt", sft, "--prompts", f"{data}/prompts_train.jsonl",
          "--out", f"{out}/samples_ai.jsonl", "--k", str(args.samples_per_prompt), "--n_prompts",
          str(args.label_prompts), "--temperature", "1.0", "--seed", str(args.seed + 1)]),
        ("AI labels", f"{out}/prefs_ai.jsonl",
         [py, "-m", "minirlhf.lab.annotate", "label", "--samples", f"{out}/samples_ai.jsonl", "--out",
          f"{out}/prefs_ai.jsonl", "--labeller", "rm", "--rm_ckpt", rm_ai]),
        ("DPO-AI", f"{out}/dpo_ai/ckpt.pt", dpo(f"{out}/prefs_ai.jsonl", f"{out}/dpo_ai")),
    ]
    # wall times of stages skipped here: this script's own record, the quick start's, or the run's log
    own_path = os.path.join(out, "timings.json")
    known = json.load(open(own_path)) if os.path.exists(own_path) else {}
    qs_path = os.path.join(qs, "timings.json")
    if os.path.exists(qs_path):
        qs_times = json.load(open(qs_path))
        qs_names = {"human labels": "label pairs", "RM": "reward model"}
        known.update({name: qs_times[qs_names.get(name, name)] for name in ("SFT", "human labels", "RM")
                      if qs_names.get(name, name) in qs_times})
        # "PPO": everything after the first reward model, later rounds' sampling, labelling and RM included
        later_stages = ("PPO", "sample pairs ", "label pairs ", "reward model ")  # "PPO 2", "reward model 2", ...
        later = [v for k, v in qs_times.items() if k.startswith(later_stages)]
        if later:
            known["PPO"] = round(sum(later), 1)
    run_dirs = {"DPO": f"{out}/dpo", "DPO-AI": f"{out}/dpo_ai"}
    logs = {"SFT": f"{qs}/sft", "RM": os.path.dirname(rm_ai), "PPO": f"{qs}/ppo"}  # the last resort: run logs
    seconds = {name: known.get(name) or logged_time(folder) for name, folder in logs.items()}
    os.makedirs(out, exist_ok=True)
    for name, done_file, cmd in stages:
        print(f"\n=== {name}\n$ {' '.join(cmd)}", flush=True)
        if os.path.exists(done_file):
            print(f"(skipped: {done_file} exists)")
            seconds[name] = known.get(name) or (logged_time(run_dirs[name]) if name in run_dirs else 0.0)
            continue
        t0 = time.time()
        subprocess.run(cmd, cwd=ROOT, check=True)
        seconds[name] = known[name] = round(time.time() - t0, 1)
        with open(own_path, "w") as f:
            json.dump(known, f)

    # ---- the report: every policy on the same held-out prompts, graded by the gold judge
    from minirlhf.checkpoint import load_model
    from minirlhf.data import PROMPT_FIELDS, read_jsonl
    from minirlhf.lab.evaluate import ROWS, evaluate_policy, format_table

    human, n_human = gold_agreement(f"{data}/prefs.jsonl")
    ai, n_ai = gold_agreement(f"{out}/prefs_ai.jsonl")
    print(f"\nlabels: human (simulated) {n_human} pairs, {human:.1%} agree with gold; "
          f"AI (reward model) {n_ai} pairs, {ai:.1%} agree with gold")
    later_rounds = sorted(f for f in os.listdir(data) if f.startswith("prefs_round"))
    if later_rounds:
        n_later = sum(1 for f in later_rounds for _ in open(os.path.join(data, f)))
        print(f"PPO's later rounds also had {n_later} pairs of its own samples labelled by the annotators "
              f"({', '.join(later_rounds)}); DPO and DPO-AI learn from the first round's labels only")
    prompts = [r["prompt"] for r in read_jsonl(f"{data}/prompts_eval.jsonl", PROMPT_FIELDS)]
    ref, tok, _ = load_model(sft, expect="gpt")
    reward_model = load_model(rm, expect="scalar")[0]  # already normalised by train_rm.py: used as it is
    columns = {"SFT": (sft, seconds["SFT"]), "PPO": (ppo, seconds["RM"] + seconds["PPO"]),
               "DPO": (f"{out}/dpo/ckpt.pt", seconds["DPO"]),
               "DPO-AI": (f"{out}/dpo_ai/ckpt.pt", seconds["RM"] + seconds["AI samples"] + seconds["AI labels"]
                          + seconds["DPO-AI"])}
    report = {}
    for name, (path, wall) in columns.items():
        policy = load_model(path, expect="gpt")[0]
        report[name] = evaluate_policy(policy, tok, prompts, reward_model=reward_model, ref_model=ref,
                                       temperature=0.7, max_new_tokens=48, seed=args.seed)
        report[name]["wall_time"] = wall
    print(f"\n{len(prompts)} held-out prompts, temperature 0.7, seed {args.seed}; {args.loss} beta {args.beta}")
    print(format_table(report, ROWS + [("wall_time", "wall time (s)")]))
    print("stage wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({"columns": report, "stage_seconds": seconds,
                   "labels": {"human_gold_agreement": human, "ai_gold_agreement": ai}}, f, indent=2)


if __name__ == "__main__":
    main()
