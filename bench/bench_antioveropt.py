"""Against over-optimisation on the lab: reward-model ensembles, PPO vs RLOO vs GRPO, early-warning signals.

    python bench/bench_antioveropt.py                       # everything: data, SFT, 10 reward models, the runs, analysis
    python bench/bench_antioveropt.py --phase runs --jobs 2 # one phase (prep, rms, runs, analyse)
    python bench/bench_antioveropt.py --phase analyse       # tables, bench/results/antioveropt_cpu.json and the figure

Phases (each a list of the project's own commands, printed before they run; a finished command is recorded
by minirlhf/stages.py and skipped on a rerun, so a stopped bench resumes):
  prep     lab data, SFT (small preset), two sets of SFT samples (seed 0 for the training reward models, seed 1
           for the held-out monitor), each labelled twice: clean (flip 0) and noisy (25 % of labels flipped)
  rms      for each label set, K reward models (seeds 0..K-1, same pairs) and one monitor (seed 100, the other pairs)
  bon      best-of-n (n = 1..64 from 64 SFT samples per held-out prompt) against one reward model and the
           ensembles' mean / min / uwo, clean and noisy labels
  runs     PPO against a single reward model and against the mean / min (WCO) / UWO of the ensemble, with and
           without flipped labels, at kl_coef 0 (built to over-optimise); PPO at kl_coef 0.2 on clean labels
           (not over-optimising: the false-alarm runs); RLOO and GRPO beside PPO on the noisy labels
  queue    reward models and runs named by --only, in that order, `jobs` at a time (a subset, in a given order)
  dpo      DPO on the noisy labels, one run per seed (200 steps, beta 0.1), then SFT and each DPO policy evaluated
           on the held-out prompts (gold, KL to SFT): DPO's point beside the RL curves
  analyse  gold peak, gold against sqrt(KL), equal-time and equal-KL comparisons per seed and over seeds (mean,
           sd, range), and each early-warning signal's lead time and false alarms (minirlhf.monitor.first_firing),
           into one JSON and one figure

Runs go `jobs` at a time (each model uses one thread). Everything lands in --out_dir (default out/antioveropt).
Every run: 40 iterations of 64 rollouts, policy lr 1e-4 (3x train_ppo's default, so that over-optimisation
shows within 40 iterations), 4 epochs x 4 minibatches, temperature 0.7; RLOO and GRPO with group_size 4
(16 prompts x 4 per iteration). What the README's tables come from (2 quiet cores, 2026-12-02; 41 minutes in all):

    python bench/bench_antioveropt.py --phase prep
    python bench/bench_antioveropt.py --phase rms
    python bench/bench_antioveropt.py --phase bon
    python bench/bench_antioveropt.py --phase queue --seeds 3 --only ppo_flip_single_s0,rloo_flip_single_s0,\
grpo_flip_single_s0,ppo_clean_single_kl0.2_s0,ppo_flip_single_s1,rloo_flip_single_s1,grpo_flip_single_s1,\
ppo_clean_single_kl0.2_s1,ppo_flip_single_s2,rloo_flip_single_s2,grpo_flip_single_s2,ppo_clean_single_kl0.2_s2,\
ppo_flip_mean_s0,ppo_flip_min_s0,ppo_flip_uwo_s0,ppo_clean_single_s0,ppo_clean_mean_s0,ppo_clean_min_s0,ppo_clean_uwo_s0
    python bench/bench_antioveropt.py --phase dpo --seeds 3
    python bench/bench_antioveropt.py --phase queue --seeds 3 --only ppo_flip_mean_s1,ppo_flip_min_s1,ppo_flip_uwo_s1,\
ppo_flip_mean_s2,ppo_flip_min_s2,ppo_flip_uwo_s2
    python bench/bench_antioveropt.py --phase queue --seeds 3 --only ppo_clean_single_s1,ppo_clean_mean_s1,\
ppo_clean_min_s1,ppo_clean_uwo_s1,ppo_clean_single_s2,ppo_clean_mean_s2,ppo_clean_min_s2,ppo_clean_uwo_s2
    python bench/bench_antioveropt.py --phase analyse --seeds 3 --note "..."
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from minirlhf.stages import Stage, run_stages, run_stages_apart  # noqa: E402

PY = sys.executable
K = 4  # ensemble members
AGG = ("single", "mean", "min", "uwo")


def prep_stages(out, a):
    d = f"{out}/data"
    st = [Stage("lab data", [PY, "-m", "minirlhf.lab.make_data", "--out_dir", d, "--seed", "0", "--n_eval_prompts", "100"]),
          Stage("SFT", [PY, "train_sft.py", "--train_data", f"{d}/sft.jsonl", "--eval_data", f"{d}/sft_eval.jsonl",
                        "--out_dir", f"{out}/sft", "--init_from", "scratch:small", "--max_steps", "1000", "--lr", "2e-3",
                        "--log_interval", "100", "--eval_interval", "500", "--ckpt_interval", "500", "--seed", "0",
                        "--threads", "1"], resume_dir=f"{out}/sft")]
    for tag, seed in (("", 0), ("_monitor", 1)):
        st.append(Stage(f"sample{tag}", [PY, "-m", "minirlhf.lab.annotate", "sample", "--ckpt", f"{out}/sft/ckpt.pt",
                                         "--prompts", f"{d}/prompts_train.jsonl", "--out", f"{d}/samples{tag}.jsonl",
                                         "--k", "4", "--n_prompts", "1200", "--temperature", "1.0", "--seed", str(seed)]))
        for noise, flip in (("clean", "0.0"), ("flip", "0.25")):
            st.append(Stage(f"label{tag} {noise}", [
                PY, "-m", "minirlhf.lab.annotate", "label", "--samples", f"{d}/samples{tag}.jsonl",
                "--out", f"{d}/prefs{tag}_{noise}.jsonl", "--labeller", "sim", "--temperature", "0.1",
                "--flip_rate", flip, "--seed", str(seed)]))
    return st


def rm_stage(out, noise, seed, monitor=False, steps=150):
    tag = "_monitor" if monitor else ""
    rm_dir = f"{out}/rm_{noise}{'_monitor' if monitor else seed}"
    return Stage(f"rm {rm_dir}", [
        PY, "train_rm.py", "--train_data", f"{out}/data/prefs{tag}_{noise}.jsonl", "--sft_ckpt", f"{out}/sft/ckpt.pt",
        "--out_dir", rm_dir, "--max_steps", str(steps), "--batch_size", "64", "--micro_batch_size", "64",
        "--log_interval", "50", "--eval_interval", "1000", "--ckpt_interval", "1000", "--seed", str(seed),
        "--threads", "1"], resume_dir=rm_dir)


def rm_stages(out):
    return ([rm_stage(out, "flip", s) for s in range(K)] + [rm_stage(out, "flip", 100, monitor=True)]
            + [rm_stage(out, "clean", 0), rm_stage(out, "clean", 100, monitor=True)]
            + [rm_stage(out, "clean", s) for s in range(1, K)])  # in order of priority


def rms(out, noise):
    return ",".join(f"{out}/rm_{noise}{s}/ckpt.pt" for s in range(K))


def run_stage(out, name, algo, noise, agg="single", kl_coef=0.0, iters=40, seed=0, lr=1e-4):
    run_dir = f"{out}/runs/{name}"
    script, extra = ("train_ppo.py", []) if algo == "ppo" else ("train_rloo.py", ["--advantage", algo])
    rm = f"{out}/rm_{noise}0/ckpt.pt" if agg == "single" else rms(out, noise)
    cmd = [PY, script, "--prompts", f"{out}/data/prompts_train.jsonl", "--eval_prompts", f"{out}/data/prompts_eval.jsonl",
           "--sft_ckpt", f"{out}/sft/ckpt.pt", "--rm_ckpt", rm, "--monitor_rm_ckpt", f"{out}/rm_{noise}_monitor/ckpt.pt",
           "--out_dir", run_dir, "--num_iters", str(iters), "--kl_coef", str(kl_coef), "--eval_interval", str(iters),
           "--ckpt_interval", "10", "--log_samples", "0", "--lr", str(lr), "--seed", str(seed), "--threads", "1", *extra]
    if agg != "single":
        cmd += ["--rm_aggregate", agg]
    return Stage(f"run {name}", cmd, resume_dir=run_dir, meta=dict(algo=algo, noise=noise, agg=agg, kl_coef=kl_coef, seed=seed))


def runs_stages(out, a):
    st = []
    for seed in range(a.seeds):  # in order of priority: the noisy labels first
        for agg in AGG:
            st.append(run_stage(out, f"ppo_flip_{agg}_s{seed}", "ppo", "flip", agg, 0.0, a.iters, seed))
        st.append(run_stage(out, f"ppo_clean_single_kl0.2_s{seed}", "ppo", "clean", "single", 0.2, a.iters, seed))
        for algo in ("rloo", "grpo"):
            st.append(run_stage(out, f"{algo}_flip_single_s{seed}", algo, "flip", "single", 0.0, a.iters, seed))
        for agg in AGG:
            st.append(run_stage(out, f"ppo_clean_{agg}_s{seed}", "ppo", "clean", agg, 0.0, a.iters, seed))
    return st


def dpo_stages(out, a):
    """DPO on the noisy labels (the very pairs the reward models learned from), one run per seed, then one
    evaluation of SFT and every DPO policy on the held-out prompts (tax.py: gold and KL to SFT at temperature 0.7,
    as the RL runs' rollouts are sampled). DPO is offline: one point (gold, KL, seconds) per seed, not a curve."""
    d, sft = f"{out}/data", f"{out}/sft/ckpt.pt"
    st = []
    for seed in range(a.seeds):
        run_dir = f"{out}/runs/dpo_flip_s{seed}"
        st.append(Stage(f"run dpo_flip_s{seed}", [
            PY, "train_dpo.py", "--train_data", f"{d}/prefs_flip.jsonl", "--sft_ckpt", sft, "--out_dir", run_dir,
            "--max_steps", "200", "--log_interval", "50", "--eval_interval", "100000", "--ckpt_interval", "100",
            "--seed", str(seed), "--threads", "1"], resume_dir=run_dir, meta=dict(algo="dpo", noise="flip", seed=seed)))
    evaluate = Stage("evaluate dpo", [
        PY, "-m", "minirlhf.lab.tax", f"SFT={sft}", *[f"dpo_flip_s{s}={out}/runs/dpo_flip_s{s}/ckpt.pt" for s in range(a.seeds)],
        "--ref", sft, "--prompts", f"{d}/prompts_eval.jsonl", "--k", "4", "--json", f"{out}/runs/dpo_eval.json"])
    return st, evaluate


def run_parallel(stages, out, jobs):
    """Each stage a pipeline of one with its own state folder, `jobs` at a time, each in its own process."""
    run_stages_apart(stages, [f"{out}/stages/{os.path.basename(s.resume_dir)}" for s in stages], jobs, cwd=ROOT)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="out/antioveropt")
    p.add_argument("--phase", default="all", choices=["all", "prep", "rms", "bon", "runs", "queue", "dpo", "analyse"])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--only", default="", help="comma-separated output folder names (rm_flip0, ppo_flip_min_s0, ...) to run")
    p.add_argument("--noises", default="flip,clean", help="bon phase: which label sets")
    p.add_argument("--note", default="", help="analyse: how the runs were made (machine load), kept in the JSON")
    p.add_argument("--json", default="bench/results/antioveropt_cpu.json")
    p.add_argument("--plot", default="bench/results/antioveropt_cpu.png")
    a = p.parse_args()
    out = a.out_dir
    if a.phase in ("all", "prep"):
        run_stages(prep_stages(out, a), state_dir=out, cwd=ROOT)
    if a.phase == "queue":  # reward models and runs in one queue, in the order of --only
        by_name = {os.path.basename(s.resume_dir): s for s in rm_stages(out) + runs_stages(out, a)}
        run_parallel([by_name[n] for n in a.only.split(",")], out, a.jobs)
    if a.phase in ("all", "rms"):
        run_parallel([s for s in rm_stages(out) if not a.only or os.path.basename(s.resume_dir) in a.only.split(",")],
                     out, a.jobs)
    if a.phase in ("all", "bon"):
        from bench.antioveropt_analysis import bon_study
        bon_study(out, a.json.replace(".json", "_bon.json"), noises=a.noises.split(","))
    if a.phase in ("all", "runs"):
        st = runs_stages(out, a)
        if a.only:
            st = [s for s in st if os.path.basename(s.resume_dir) in a.only.split(",")]
        run_parallel(st, out, a.jobs)
    if a.phase in ("all", "dpo"):
        trainings, evaluate = dpo_stages(out, a)
        run_parallel(trainings, out, a.jobs)
        run_stages([evaluate], state_dir=out, cwd=ROOT)
    if a.phase in ("all", "analyse"):
        from bench.antioveropt_analysis import analyse
        analyse(out, runs_stages(out, a), a.json, a.plot, dpo=dpo_stages(out, a)[0], note=a.note)


if __name__ == "__main__":
    main()
