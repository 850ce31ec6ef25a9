"""Ensembles that differ where it matters: which kind of reward-model ensemble moves the gold-vs-KL frontier?

    python bench/bench_ensembles.py --phase prep            # lab data, 4 SFT models, labelled pairs, gold pairs
    python bench/bench_ensembles.py --phase rms --jobs 2    # every member of every kind, for every seed and label set
    python bench/bench_ensembles.py --phase warm            # WARM: the weight average of kind (a)'s members
    python bench/bench_ensembles.py --phase bon             # best-of-n and the members' errors on gold-labelled pairs
    python bench/bench_ensembles.py --phase runs --jobs 2   # PPO at kl_coef 0.01 and 0 against each kind
    python bench/bench_ensembles.py --phase analyse         # tables, bench/results/ensembles_cpu.{json,md,png}
    python bench/docs_check.py --update                     # docs/ensembles.md's tables from that file

Four members per ensemble, in four kinds (issue 26; Coste et al. 2024, Eisenstein et al. 2023, Rame et al. 2024):
  a  fine-tune seed only: members start from the same SFT model, learn from the same pairs, differ in seed
     (head initialisation, batch order, and the tenth of the pairs train_rm.py holds out);
  b  disjoint data: member j learns from the j-th quarter of the prompts' pairs (same SFT model, same steps);
  c  pretraining seed: member j starts from an SFT model trained from scratch with seed j (Eisenstein et al.'s
     "pretrain ensembles": on the lab, pretraining and SFT are one run); all learn from the same pairs. The
     policy starts from SFT seed 0, so member 0 of (c) is member 0 of (a); every SFT model uses the lab
     tokenizer, so every member scores the policy's own token sequences;
  d  WARM (Rame et al. 2024): the weight average of (a)'s four members, one reward model. Averaging weights is
     meaningful only for models fine-tuned from one initialisation: (a)'s members share the SFT model (their
     scalar heads start from different seeds, but fine-tuning keeps them in one basin; the measured accuracy
     of the average says whether it did). The average is normalised again on SFT samples, as train_rm.py does.
"single" is (a)'s member 0: one reward model, the yardstick.

One set of members per label set (fine-tuning seeds 0-3, quarters shuffled with seed 0), trained once: a
member costs about two core-minutes here, and the 2-core machine had room for 22, not 66. "Seed s" is PPO's
seed and the best-of-n samples' seed; the lab data, the SFT models, the labelled pairs (clean = flip 0,
flip = 25 % flipped, both at annotator temperature 0.1) and the members are shared by all seeds. So the seeds'
spread measures the policy side only; the members' own variation is measured on the gold-labelled pairs.

What the committed results come from (2026-12-06, 2 cores, at first shared with other jobs; docs/ensembles.md):

    python bench/bench_ensembles.py --phase prep
    python bench/bench_ensembles.py --phase rms --noises flip,clean
    python bench/bench_ensembles.py --phase warm --noises flip,clean
    python bench/bench_ensembles.py --phase bon --noises flip,clean --seeds 0,1,2
    python bench/bench_ensembles.py --phase runs --noises flip,clean --kl_coefs 0.01,0.0
    python bench/bench_ensembles.py --phase analyse --noises flip,clean --kl_coefs 0.01,0.0 --note "..."

Everything is the project's own commands (train_sft.py, train_rm.py, train_ppo.py --rm_ckpt a,b,c,d
--rm_aggregate, minirlhf.lab.*), run through minirlhf/stages.py: a finished command is skipped on a rerun, so
each phase resumes. Files land in --out_dir (default out/ensembles).
"""

import argparse
import json
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from minirlhf.stages import Stage, run_stages, run_stages_apart  # noqa: E402

PY = sys.executable
K = 4  # members per ensemble
KINDS = ("a", "b", "c")  # prediction ensembles; d (WARM) is one model made from (a)'s members
NOISES = {"flip": "0.25", "clean": "0.0"}
SFT_STEPS, RM_STEPS = 1000, 150
RM_SEED = 0  # one set of members (seeds 0-3, quarters shuffled with 0), shared by the seeds of PPO and best-of-n


# ----------------------------------------------------------------------------- shared pieces: data, SFT models, pairs


def prep_stages(out):
    d = f"{out}/data"
    st = [Stage("lab data", [PY, "-m", "minirlhf.lab.make_data", "--out_dir", d, "--seed", "0", "--n_eval_prompts", "100"])]
    return st, [sft_stage(out, j) for j in range(K)], pair_stages(out)


def sft_stage(out, seed):
    """SFT from scratch (the lab's pretraining and SFT are one run), seed `seed`; same data for every seed."""
    d = f"{out}/data"
    return Stage(f"SFT seed {seed}", [
        PY, "train_sft.py", "--train_data", f"{d}/sft.jsonl", "--eval_data", f"{d}/sft_eval.jsonl",
        "--out_dir", f"{out}/sft{seed}", "--init_from", "scratch:small", "--max_steps", str(SFT_STEPS), "--lr", "2e-3",
        "--log_interval", "100", "--eval_interval", "500", "--ckpt_interval", "500", "--seed", str(seed),
        "--threads", "1"], resume_dir=f"{out}/sft{seed}")


def pair_stages(out):
    """Training pairs: 4 samples of SFT seed 0 per train prompt, labelled clean and with 25 % flips. Held-out
    pairs for the members' errors: 4 samples per held-out prompt (other seed), labelled by the gold judge."""
    d, sft = f"{out}/data", f"{out}/sft0/ckpt.pt"
    st = [Stage("sample train", [PY, "-m", "minirlhf.lab.annotate", "sample", "--ckpt", sft, "--prompts",
                                 f"{d}/prompts_train.jsonl", "--out", f"{d}/samples.jsonl", "--k", "4",
                                 "--temperature", "1.0", "--seed", "0"])]
    for noise, flip in NOISES.items():
        st.append(Stage(f"label {noise}", [PY, "-m", "minirlhf.lab.annotate", "label", "--samples", f"{d}/samples.jsonl",
                                           "--out", f"{d}/prefs_{noise}.jsonl", "--labeller", "sim", "--temperature",
                                           "0.1", "--flip_rate", flip, "--seed", "0"]))
    st += [Stage("sample held-out", [PY, "-m", "minirlhf.lab.annotate", "sample", "--ckpt", sft, "--prompts",
                                     f"{d}/prompts_eval.jsonl", "--out", f"{d}/samples_heldout.jsonl", "--k", "4",
                                     "--temperature", "1.0", "--seed", "1"]),
           Stage("label held-out gold", [PY, "-m", "minirlhf.lab.annotate", "label", "--samples",
                                         f"{d}/samples_heldout.jsonl", "--out", f"{d}/prefs_heldout_gold.jsonl",
                                         "--labeller", "gold"])]
    return st


def write_quarters(out, noise, seed):
    """Kind (b)'s data: the pairs split by prompt into K disjoint quarters (shuffled with `seed`) -> K paths."""
    paths = [f"{out}/data/quarters/prefs_{noise}_s{seed}_q{j}.jsonl" for j in range(K)]
    if all(os.path.exists(p) for p in paths):
        return paths
    rows = [json.loads(line) for line in open(f"{out}/data/prefs_{noise}.jsonl")]
    prompts = sorted({r["prompt"] for r in rows})
    random.Random(seed).shuffle(prompts)
    quarter = {p: i * K // len(prompts) for i, p in enumerate(prompts)}
    os.makedirs(os.path.dirname(paths[0]), exist_ok=True)
    for j, path in enumerate(paths):
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows if quarter[r["prompt"]] == j)
        os.replace(path + ".tmp", path)
    return paths


# ----------------------------------------------------------------------------- reward models


def member_dir(out, noise, kind, j, rm_seed=RM_SEED):
    if kind == "c" and j == 0:
        kind = "a"  # the same SFT model, pairs and seed: one model
    return f"{out}/rm/{noise}_s{rm_seed}/{kind}{j}"


def members(out, noise, kind):
    """Checkpoint paths of one ensemble; kind 'single' is (a)'s member 0, 'd' the WARM average."""
    if kind == "single":
        return [f"{member_dir(out, noise, 'a', 0)}/ckpt.pt"]
    if kind == "d":
        return [f"{out}/rm/{noise}_s{RM_SEED}/warm/ckpt.pt"]
    return [f"{member_dir(out, noise, kind, j)}/ckpt.pt" for j in range(K)]


def rm_stage(out, noise, kind, j, rm_seed=RM_SEED):
    rm_dir = member_dir(out, noise, kind, j, rm_seed)
    data = write_quarters(out, noise, rm_seed)[j] if kind == "b" else f"{out}/data/prefs_{noise}.jsonl"
    sft = f"{out}/sft{j if kind == 'c' else 0}/ckpt.pt"
    return Stage(f"rm {rm_dir}", [
        PY, "train_rm.py", "--train_data", data, "--sft_ckpt", sft, "--out_dir", rm_dir, "--max_steps", str(RM_STEPS),
        "--batch_size", "64", "--micro_batch_size", "64", "--log_interval", "50", "--eval_interval", "1000",
        "--ckpt_interval", "1000", "--seed", str(100 * rm_seed + j), "--threads", "1"], resume_dir=rm_dir)


def rm_stages(out, noises):
    """Every member, in order of priority: noisy labels first, then kind a, c, b."""
    st, seen = [], set()
    for noise in noises:
        for kind in ("a", "c", "b"):
            for j in range(K):
                s = rm_stage(out, noise, kind, j)
                if s.resume_dir not in seen:
                    seen.add(s.resume_dir)
                    st.append(s)
    return st


def make_warm(out, noise):
    """Kind (d): average (a)'s members (minirlhf.ensemble.warm_average), normalise the average on SFT samples
    (train_rm.py's normalise_on_sft_samples, its default settings and the first member's seed), save it."""
    from types import SimpleNamespace

    import torch

    from minirlhf.checkpoint import load_checkpoint, load_model, save_checkpoint
    from minirlhf.data import read_jsonl
    from minirlhf.ensemble import warm_average
    from minirlhf.model import GPTConfig, ScalarGPT
    from train_rm import normalise_on_sft_samples
    path = members(out, noise, "d")[0]
    if os.path.exists(path):
        return path
    paths = members(out, noise, "a")
    ckpts = [load_checkpoint(p, expect="scalar") for p in paths]
    model = ScalarGPT(GPTConfig(**ckpts[0]["model_args"]))
    model.load_state_dict(warm_average(ckpts, paths))
    model.eval()
    sft, tok, _ = load_model(ckpts[0]["config"]["sft_ckpt"], expect="gpt")
    prompts = [r["prompt"] for r in read_jsonl(f"{out}/data/prefs_{noise}.jsonl", ("prompt",))]  # as train_rm.py
    norm = SimpleNamespace(norm_samples=256, micro_batch_size=64, max_new_tokens=48, norm_temperature=0.7,
                           seed=ckpts[0]["config"]["seed"])
    torch.manual_seed(norm.seed)
    mean, std = normalise_on_sft_samples(model, sft, tok, prompts, norm, "cpu")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_checkpoint(path, model, stage="rm", tokenizer_name=tok.name, step=0, normalised=True, reward_mean=mean,
                    reward_std=std, warm_members=paths, config={**ckpts[0]["config"], "seed": norm.seed})
    print(f"WARM {path}: average of {len(paths)} members, normalised (raw mean {mean:.3f}, std {std:.3f})")
    return path


# ----------------------------------------------------------------------------- PPO


def run_stage(out, noise, kind, kl_coef, seed, iters, agg):
    name = f"ppo_{noise}_{kind}_kl{kl_coef}_s{seed}"
    run_dir = f"{out}/runs/{name}"
    cmd = [PY, "train_ppo.py", "--prompts", f"{out}/data/prompts_train.jsonl", "--eval_prompts",
           f"{out}/data/prompts_eval.jsonl", "--sft_ckpt", f"{out}/sft0/ckpt.pt", "--rm_ckpt",
           ",".join(members(out, noise, kind)), "--out_dir", run_dir, "--num_iters", str(iters), "--kl_coef",
           str(kl_coef), "--eval_interval", str(iters), "--ckpt_interval", str(iters), "--log_samples", "0",
           "--lr", "1e-4", "--seed", str(seed), "--threads", "1"]
    if kind in KINDS:
        cmd += ["--rm_aggregate", agg]
    return Stage(f"run {name}", cmd, resume_dir=run_dir,
                 meta=dict(noise=noise, kind=kind, kl_coef=kl_coef, seed=seed, agg=agg if kind in KINDS else None))


def runs_stages(out, seeds, noises, kl_coefs, iters, agg):
    """In order of priority: Coste et al.'s setting (25 % flips, kl_coef 0.01) first, seed by seed."""
    return [run_stage(out, noise, kind, kl, seed, iters, agg)
            for noise in noises for kl in kl_coefs for seed in seeds for kind in ("single", "a", "b", "c", "d")]


# ----------------------------------------------------------------------------- running stages


def run_parallel(stages, out, jobs):
    """Each stage in its own process with its own state folder, `jobs` at a time (each model uses one thread)."""
    slugs = [s.resume_dir.replace(out, "").strip("/").replace("/", "_") if s.resume_dir else "misc" for s in stages]
    run_stages_apart(stages, [f"{out}/stages/{slug}" for slug in slugs], jobs, cwd=ROOT)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="out/ensembles")
    p.add_argument("--phase", required=True, choices=["prep", "rms", "warm", "bon", "runs", "analyse"])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--noises", default="flip,clean")
    p.add_argument("--kl_coefs", default="0.01,0.0")
    p.add_argument("--iters", type=int, default=16, help="PPO iterations per run")
    p.add_argument("--agg", default="min", help="how PPO aggregates a prediction ensemble (mean, min, uwo)")
    p.add_argument("--note", default="", help="analyse: how the runs were made (machine load), kept in the JSON")
    p.add_argument("--json", default="bench/results/ensembles_cpu.json")
    p.add_argument("--only", default="", help="rms/runs: comma-separated folder names to run (a0, ppo_flip_a_kl0.01_s0, ...)")
    a = p.parse_args()
    out, seeds, noises = a.out_dir, [int(s) for s in a.seeds.split(",")], a.noises.split(",")
    if a.phase == "prep":
        data, sfts, pairs = prep_stages(out)
        run_stages(data, state_dir=out, cwd=ROOT)
        run_parallel(sfts, out, a.jobs)
        run_stages(pairs, state_dir=out, cwd=ROOT)
    if a.phase == "warm":
        for noise in noises:
            make_warm(out, noise)
    if a.phase == "bon":
        from bench.ensembles_analysis import bon_and_errors
        for noise in noises:
            for seed in seeds:
                bon_and_errors(out, noise, seed)
    if a.phase == "runs":
        st = runs_stages(out, seeds, noises, [float(k) for k in a.kl_coefs.split(",")], a.iters, a.agg)
        if a.only:
            st = [s for s in st if os.path.basename(s.resume_dir) in a.only.split(",")]
        run_parallel(st, out, a.jobs)
    if a.phase == "analyse":
        from bench.ensembles_analysis import analyse
        analyse(out, runs_stages(out, seeds, noises, [float(k) for k in a.kl_coefs.split(",")], a.iters, a.agg),
                seeds, noises, a.json, a.note)
    if a.phase == "rms":
        st = rm_stages(out, noises)
        if a.only:
            st = [s for s in st if s.resume_dir.split("/rm/")[-1] in a.only.split(",")]
        run_parallel(st, out, a.jobs)


if __name__ == "__main__":
    main()
