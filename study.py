"""The lab as an instrument: reward over-optimisation, the four levers of RLHF and the alignment tax, measured
against the gold judge, in one resumable command.

    python study.py --quick                       # one seed; 9.5 minutes on 2 quiet CPU cores before the kept
                                                  # PPO segments and calm runs were added (more now)
    python study.py                               # the full preset: 3 seeds of everything (37 minutes measured
                                                  # with one seed of over-optimisation; about 3x that part now)
    python study.py --quick --seeds 0,1,2 --parts overopt   # over-optimisation only, three seeds
    python study.py --quick --out_dir out/s2 --jobs 1       # one stage at a time

Every stage is one of the project's own commands, printed before it runs, so this file is also the recipe.
What it measures (the shapes to compare with are Gao et al. 2023's; the report says where the lab differs):

  over-optimisation   per seed, gold and proxy against d = sqrt(KL to SFT) for best-of-n (n = 1 .. N, from one set
                      of N SFT samples per held-out prompt, bestofn.py) and for long PPO runs (kl_coef from 0, which
                      over-optimises, to 0.2, which stays calm), with clean labels and with 25 % flipped labels.
                      Each PPO run is made in segments (`study.py snapshots`, below) that keep every few iterations'
                      policy, and each kept policy is judged on the held-out prompts, k samples each (tax.py): gold,
                      KL to SFT and proxy, not the noisy gold of training rollouts. Gao et al.'s two forms are fitted
                      per seed, and reported as mean ± sd over seeds (overopt.py, study_report.py).
  the four levers     data quality (flip rate, annotator temperature, annotator bias), RM accuracy (few pairs),
                      KL strength (kl_coef 0 and 1 against the baseline), coverage (one family never labelled):
                      per setting and seed a reward model and a short PPO run; RM accuracy against gold on
                      held-out pairs, the policy's gold, KL to SFT (tax.py).
  the alignment tax   diversity, over-refusal, held-out demonstration log-likelihood and per-family gold for SFT,
                      best-of-n, PPO at each kl_coef and DPO (tax.py), for the first seed.

--seeds sets the seeds of every per-seed stage; --parts runs some of overopt, levers, tax (each with the shared
stages it needs). Shared by every setting (cheap, and what the levers do not touch): the lab data, one SFT model,
one set of SFT samples on the train prompts (each setting labels them with its own annotator), gold-labelled
held-out pairs. Stages run in two lanes at once (--jobs 2; the lab's models use one thread each), each lane's
stages in order. A stage counts as done only once its command finished (minirlhf/stages.py): rerun the same
command to resume. Outputs in out_dir: study.json (every number), report.md, overopt.png, levers.png, and each
stage's outputs; a long PPO run's folder also holds ckpt_it{N}.pt (the kept policies) and rollout_gold.jsonl (the
gold score of every rollout of every iteration, which bench/gold_audit.py reads to measure a gold-audit stop).
"""

import argparse
import os
import signal
import subprocess
import sys
import time

from minirlhf.flags import number
from minirlhf.stages import Stage, run_stages

ROOT = os.path.dirname(os.path.abspath(__file__))
PRESETS = {  # quick: one seed, shorter runs; full: three seeds of everything
    "quick": dict(seeds=[0], sft_steps=600, label_prompts=600, few_prompts=60, rm_steps=100, bon_samples=64,
                  bon_ns=[1, 2, 4, 8, 16, 32, 64], oo_iters=64, oo_batch=32, oo_every=8, oo_eval_k=4,
                  oo_runs=[("flip25", 0.0), ("flip25", 0.2), ("clean", 0.0), ("clean", 0.2)],
                  lever_iters=20, lever_batch=32, tax_k=6, dpo_steps=100),
    "full": dict(seeds=[0, 1, 2], sft_steps=1000, label_prompts=1000, few_prompts=60, rm_steps=200,
                 bon_samples=128, bon_ns=[1, 2, 4, 8, 16, 32, 64, 128], oo_iters=120, oo_batch=32, oo_every=10,
                 oo_eval_k=4, oo_runs=[(rm, kl) for rm in ("flip25", "clean") for kl in (0.0, 0.01, 0.05, 0.2)],
                 lever_iters=30, lever_batch=32, tax_k=8, dpo_steps=150),
    "tiny": dict(seeds=[0], sft_steps=20, label_prompts=24, few_prompts=8, rm_steps=3, bon_samples=4,
                 bon_ns=[1, 2, 4], oo_iters=2, oo_batch=8, oo_every=1, oo_eval_k=2, oo_runs=[("clean", 0.0)],
                 lever_iters=1, lever_batch=8, tax_k=2, dpo_steps=2, levers=1),  # the test suite's run: one RM
}
PARTS = ("overopt", "levers", "tax")  # --parts: over-optimisation, the four levers, the alignment tax (and DPO)
BASE_KL, LEFT_OUT = 0.1, "unknown_fact"
# reward-model variants: (annotator flags, samples file); "few" labels the samples of only few_prompts prompts
ANNOTATORS = {
    "clean": ["--temperature", "0.1"],
    "flip25": ["--temperature", "0.1", "--flip_rate", "0.25"],
    "temp1": ["--temperature", "1.0"],
    "bias1": ["--temperature", "0.1", "--bias", "1.0"],
    "few": ["--temperature", "0.1"],
    "nocov": ["--temperature", "0.1", "--families",
              ",".join(f for f in ("arithmetic", "known_fact", "unknown_fact", "harmful", "benign", "sycophancy")
                       if f != LEFT_OUT)],
}
# lever rows: (lever, setting, reward model, kl_coef, expected effect on gold against the baseline)
LEVERS = [
    ("baseline", "clean labels, beta 0.1", "clean", BASE_KL, None),
    ("data quality", "25 % labels flipped", "flip25", BASE_KL, "down"),
    ("data quality", "annotator temperature 1.0", "temp1", BASE_KL, "down"),
    ("data quality", "annotator bias 1.0 (likes filler)", "bias1", BASE_KL, "down"),
    ("RM accuracy", "few labelled pairs", "few", BASE_KL, "down"),
    ("KL strength", "beta 0 (no penalty)", "clean", 0.0, "down"),
    ("KL strength", "beta 1.0", "clean", 1.0, "closer to SFT"),
    ("coverage", f"{LEFT_OUT} never labelled", "nocov", BASE_KL, "down on the family"),
]


def build(args, P):
    """-> (shared stages, chains): chains are independent lists of stages, each in order."""
    py, out = sys.executable, args.out_dir
    data, sft = f"{out}/data", f"{out}/sft/ckpt.pt"
    shared = [
        Stage("lab data", [py, "-m", "minirlhf.lab.make_data", "--out_dir", data, "--seed", "0"]),
        Stage("SFT", [py, "train_sft.py", "--train_data", f"{data}/sft.jsonl", "--eval_data", f"{data}/sft_eval.jsonl",
                      "--out_dir", f"{out}/sft", "--init_from", f"scratch:{args.model}", "--max_steps",
                      str(P["sft_steps"]), "--lr", "2e-3", "--log_interval", "100", "--eval_interval", "10000",
                      "--ckpt_interval", "200", "--seed", "0"], resume_dir=f"{out}/sft"),
        Stage("SFT samples", _sample(py, sft, f"{data}/prompts_train.jsonl", f"{data}/samples.jsonl", 4,
                                     P["label_prompts"])),
        Stage("held-out samples", _sample(py, sft, f"{data}/prompts_eval.jsonl", f"{data}/samples_eval.jsonl", 4, 0)),
        Stage("held-out gold labels", [py, "-m", "minirlhf.lab.annotate", "label", "--samples",
                                       f"{data}/samples_eval.jsonl", "--out", f"{data}/pairs_gold_eval.jsonl",
                                       "--labeller", "gold"]),
    ]
    parts, levers = args.parts, LEVERS[:P.get("levers")] if "levers" in args.parts else []
    if any(rm == "few" for _, _, rm, _, _ in levers):  # the same prompts' samples, fewer of them
        shared.insert(3, Stage("SFT samples (few)", _sample(py, sft, f"{data}/prompts_train.jsonl",
                                                           f"{data}/samples_few.jsonl", 4, P["few_prompts"])))
    common_eval = ["--prompts", f"{data}/prompts_eval.jsonl", "--ref", sft, "--demos", f"{data}/sft_eval.jsonl",
                   "--pairs", f"{data}/pairs_gold_eval.jsonl", "--k", str(P["tax_k"])]
    chains, seeds = [], P["seeds"]
    oo_runs = P["oo_runs"] if "overopt" in parts else []
    rm_used = {(rm, s) for _, _, rm, _, _ in levers for s in seeds} | {(rm, s) for rm, _ in oo_runs for s in seeds}
    if "tax" in parts:
        rm_used.add(("clean", seeds[0]))
    for rm, s in sorted(rm_used, key=lambda x: (x[1], x[0])):
        tag, samples = f"{rm}_s{s}", f"{data}/samples{'_few' if rm == 'few' else ''}.jsonl"
        rm_dir, chain = f"{out}/rm/{tag}", []
        chain += [
            Stage(f"labels {tag}", [py, "-m", "minirlhf.lab.annotate", "label", "--samples", samples, "--out",
                                    f"{out}/labels/{tag}.jsonl", "--labeller", "sim", *ANNOTATORS[rm], "--seed", str(s)]),
            Stage(f"RM {tag}", [py, "train_rm.py", "--train_data", f"{out}/labels/{tag}.jsonl", "--sft_ckpt", sft,
                                "--out_dir", rm_dir, "--max_steps", str(P["rm_steps"]), "--batch_size", "64",
                                "--micro_batch_size", "64", "--log_interval", "100", "--eval_interval", "100000",
                                "--ckpt_interval", "100", "--seed", str(s)], resume_dir=rm_dir,
                  meta={"cost": P["rm_steps"] * 0.2})]
        long_runs = [(f"{tag}_kl{kl:g}_long", kl) for r, kl in oo_runs if r == rm]
        if long_runs:  # best-of-n from the SFT samples of this seed, scored by this seed's reward model
            chain.append(Stage(f"best-of-n {tag}", [
                py, "-m", "minirlhf.lab.bestofn", "--ckpt", sft, "--rm", f"{rm_dir}/ckpt.pt", "--n",
                ",".join(map(str, P["bon_ns"])), "--n_samples", str(P["bon_samples"]), "--prompts",
                f"{data}/prompts_eval.jsonl", "--seed", str(s), "--json", f"{out}/bon/{tag}.json"],
                meta={"cost": P["bon_samples"] * 0.25}))
        for name, kl in long_runs:  # in segments, every policy kept, then all of them judged on held-out prompts
            ppo_dir, every = f"{out}/ppo/{name}", P["oo_every"]
            chain.append(Stage(f"PPO {name}", [
                py, "study.py", "snapshots", "--every", str(every), "--", *_ppo_flags(py, args, P, data, sft, rm_dir,
                ppo_dir, kl, P["oo_iters"], P["oo_batch"], s, ckpt_interval=every)], meta={"cost": P["oo_iters"] * P["oo_batch"] / 35}))
            chain.append(Stage(f"held-out gold {name}", [
                py, "-m", "minirlhf.lab.tax", f"it0={sft}",
                *[f"it{i}={ppo_dir}/ckpt_it{i}.pt" for i in _snapshot_steps(P["oo_iters"], every)], "--ref", sft,
                "--rm", f"{rm_dir}/ckpt.pt", "--prompts", f"{data}/prompts_eval.jsonl", "--k", str(P["oo_eval_k"]), "--seed", str(s),
                "--json", f"{out}/eval/oo_{name}.json"], meta={"cost": P["oo_iters"] / every * 2}))
        runs = [(f"{tag}_kl{kl:g}", kl) for kl in sorted({kl for _, _, r, kl, _ in levers if r == rm})]
        for name, kl in runs:
            ppo_dir = f"{out}/ppo/{name}"
            chain.append(Stage(f"PPO {name}", _ppo_flags(py, args, P, data, sft, rm_dir, ppo_dir, kl, P["lever_iters"],
                                                         P["lever_batch"], s, ckpt_interval=25, script=True),
                               resume_dir=ppo_dir, meta={"cost": P["lever_iters"] * P["lever_batch"] / 40}))
        if "tax" in parts and tag == f"clean_s{seeds[0]}":
            runs += [(name, kl) for name, kl in long_runs]  # the long runs' final policies join the tax table
        if runs:
            chain.append(Stage(f"evaluate {tag}", [
                py, "-m", "minirlhf.lab.tax", *[f"{name}={out}/ppo/{name}/ckpt.pt" for name, _ in runs],
                "--rm", f"{rm_dir}/ckpt.pt", *common_eval, "--seed", str(s), "--json", f"{out}/eval/{tag}.json"]))
        chains.append(chain)
    if "tax" in parts:
        clean = next(c for c in chains if c[0].name == f"labels clean_s{seeds[0]}")
        clean += [  # DPO on the clean labels; SFT and best-of-n against the clean RM, for the tax table
            Stage("DPO", [py, "train_dpo.py", "--train_data", f"{out}/labels/clean_s{seeds[0]}.jsonl", "--sft_ckpt", sft,
                          "--out_dir", f"{out}/dpo", "--max_steps", str(P["dpo_steps"]), "--log_interval", "50",
                          "--eval_interval", "100000", "--ckpt_interval", "100", "--seed", "0"], resume_dir=f"{out}/dpo",
                  meta={"cost": P["dpo_steps"] * 0.2}),
            Stage("evaluate SFT, best-of-n, DPO", [
                py, "-m", "minirlhf.lab.tax", f"SFT={sft}", f"DPO={out}/dpo/ckpt.pt", "--bon",
                f"BoN{max(P['bon_ns']) // 4}={sft}@{out}/rm/clean_s{seeds[0]}/ckpt.pt@{max(P['bon_ns']) // 4}",
                "--rm", f"{out}/rm/clean_s{seeds[0]}/ckpt.pt", *common_eval, "--json", f"{out}/eval/base.json"])]
    return shared, chains


def _ppo_flags(py, args, P, data, sft, rm_dir, ppo_dir, kl, iters, batch, seed, ckpt_interval, script=False):
    """train_ppo.py's flags for one run (with script: the whole command line)."""
    flags = ["--prompts", f"{data}/prompts_train.jsonl", "--eval_prompts", f"{data}/prompts_eval.jsonl", "--sft_ckpt",
             sft, "--rm_ckpt", f"{rm_dir}/ckpt.pt", "--out_dir", ppo_dir, "--num_iters", str(iters), "--batch_size",
             str(batch), "--kl_coef", str(kl), "--eval_interval", str(iters), "--ckpt_interval", str(ckpt_interval),
             "--log_samples", "0", "--seed", str(seed)]
    return [py, "train_ppo.py", *flags] if script else flags


def _snapshot_steps(iters, every):
    return list(range(every, iters, every)) + [iters]


def snapshots(argv):
    """`python study.py snapshots --every E -- TRAIN_PPO_FLAGS`: train_ppo.py in segments of E iterations, keeping
    every E-th policy as ckpt_it{step}.pt beside ckpt.pt, and each iteration's per-rollout gold scores in
    rollout_gold.jsonl ({"step", "gold": [one per rollout]}; the log keeps only their mean, lab/gold).

    Resuming is bit-exact (tests/test_pipeline.py), so the segments make the same run as one command. A segment
    is done once its snapshot exists; rerun the same command to continue (a killed segment restarts from the
    snapshot before it). The gold scores are those of the rollouts train_ppo.py hands the lab's RunJudge each
    iteration (read by wrapping RunJudge.metrics, graded here again), checked against the log's lab/gold."""
    p = argparse.ArgumentParser(prog="study.py snapshots")
    p.add_argument("--every", type=number(int, ge=1), required=True)
    p.add_argument("flags", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    flags = a.flags[1:] if a.flags[:1] == ["--"] else a.flags
    import json
    import shutil

    import inspect

    import train_ppo
    from minirlhf.lab.evaluate import RunJudge
    from minirlhf.lab.gold import gold
    from minirlhf.training import parse_args
    args = parse_args(train_ppo.Args, flags + ["--overwrite", "true"])
    out, judged, scores = args.out_dir, RunJudge.metrics, []

    def recording(*a, **kw):  # RunJudge.metrics, noting the gold score of each rollout it is handed
        call = inspect.signature(judged).bind(*a, **kw).arguments
        scores.extend(gold(p, t, ended=bool(e)).score for p, t, e in zip(call["prompts"], call["texts"], call["ended"]))
        return judged(*a, **kw)

    start = 0
    for stop in _snapshot_steps(args.num_iters, a.every):
        keep = f"{out}/ckpt_it{stop}.pt"
        if os.path.exists(keep):
            start = stop
            continue
        resume = ["--resume", "true"] if start else ["--overwrite", "true"]
        if start:  # continue from the last kept policy (a killed segment may have left a later ckpt.pt)
            shutil.copyfile(f"{out}/ckpt_it{start}.pt", f"{out}/ckpt.pt")
        scores.clear()
        RunJudge.metrics = recording
        try:
            train_ppo.main(parse_args(train_ppo.Args, flags + ["--num_iters", str(stop), *resume]))
        finally:
            RunJudge.metrics = judged
        with open(f"{out}/log.jsonl") as f:
            logged = {r["step"]: r["lab/gold"] for r in map(json.loads, f) if start < r["step"] <= stop}
        B = args.batch_size
        if len(scores) != B * (stop - start):
            raise RuntimeError(f"{out}: recorded {len(scores)} gold scores, expected {B} x {stop - start} iterations "
                               "(does train_ppo.py still hand its rollouts to RunJudge.metrics?)")
        rows = [{"step": start + i + 1, "gold": scores[i * B:(i + 1) * B]} for i in range(stop - start)]
        for r in rows:
            if abs(sum(r["gold"]) / B - logged[r["step"]]) > 1e-6:
                raise RuntimeError(f"{out}: iteration {r['step']}: recorded gold does not match the log's lab/gold")
        path = f"{out}/rollout_gold.jsonl"
        kept = [line for line in open(path) if json.loads(line)["step"] <= start] if start and os.path.exists(path) else []
        with open(path + ".tmp", "w") as f:
            f.writelines(kept + [json.dumps(r) + "\n" for r in rows])
        os.replace(path + ".tmp", path)
        shutil.copyfile(f"{out}/ckpt.pt", keep + ".tmp")
        os.replace(keep + ".tmp", keep)
        start = stop


def _sample(py, ckpt, prompts, out, k, n_prompts):
    return [py, "-m", "minirlhf.lab.annotate", "sample", "--ckpt", ckpt, "--prompts", prompts, "--out", out,
            "--k", str(k), "--temperature", "1.0", "--seed", "0"] + (["--n_prompts", str(n_prompts)] if n_prompts else [])


def lanes_of(chains, jobs):
    """Chains dealt to `jobs` lanes, the costliest first onto the least loaded lane (cost: rough CPU seconds)."""
    cost = lambda stages: sum(st.meta.get("cost", 5) for st in stages)  # noqa: E731
    lanes = [[] for _ in range(jobs)]
    for chain in sorted(chains, key=cost, reverse=True):
        min(lanes, key=cost).extend(chain)
    return lanes


def run_lanes(argv, n_lanes):
    """Run this script once per lane (each runs its lane's stages in order); stop them all if we are stopped."""
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--lane", str(i)], cwd=ROOT,
                              start_new_session=True) for i in range(n_lanes)]
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:  # each lane stops its running stage on SIGTERM (minirlhf/stages.py)
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if any(codes):
        raise SystemExit(f"a lane failed (exit codes {codes}); fix the error above and rerun the same command")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["snapshots"]:  # internal: one long PPO run in segments (a stage's command)
        return snapshots(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default=None, help="default out/study_quick or out/study")
    p.add_argument("--quick", action="store_true", help="the quick preset (one seed)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="overrides --quick")
    p.add_argument("--seeds", default=None, help="comma-separated seeds of every per-seed stage (labels, reward "
                   "models, best-of-n samples, PPO), e.g. 0,1,2 (default: the preset's)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"which parts to run, comma-separated from {', '.join(PARTS)}")
    p.add_argument("--model", default="small", help="model preset for SFT from scratch (tiny, small)")
    p.add_argument("--jobs", type=number(int, ge=1), default=2, help="stages run at once (lanes)")
    p.add_argument("--lane", type=int, default=None, help=argparse.SUPPRESS)  # internal: run one lane
    args = p.parse_args(argv)
    preset = args.preset or ("quick" if args.quick else "full")
    args.out_dir = args.out_dir or f"out/study_{preset}" if preset != "full" else args.out_dir or "out/study"
    P = dict(PRESETS[preset])
    if args.seeds is not None:
        try:
            P["seeds"] = sorted({int(x) for x in args.seeds.split(",")})
        except ValueError:
            p.error(f"--seeds: expected integers separated by commas, got {args.seeds!r}")
    args.parts = args.parts.split(",")
    if not args.parts or any(x not in PARTS for x in args.parts):
        p.error(f"--parts: expected some of {', '.join(PARTS)} separated by commas, got {','.join(args.parts)!r}")
    shared, chains = build(args, P)
    lanes = lanes_of(chains, max(1, args.jobs))
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # lanes side by side: one thread per stage (set_cpu_threads)
    if args.lane is not None:
        run_stages(lanes[args.lane], state_dir=args.out_dir, cwd=ROOT)
        return
    t0 = time.time()
    n_stages = len(shared) + sum(map(len, chains))
    print(f"[study] preset {preset}, seeds {P['seeds']}, parts {','.join(args.parts)}: {n_stages} stages in "
          f"{args.out_dir} ({len(shared)} shared, then {len(lanes)} lanes of {', '.join(str(len(lane)) for lane in lanes)})",
          flush=True)
    run_stages(shared, state_dir=args.out_dir, cwd=ROOT)
    print(f"[study] shared stages done at {time.time() - t0:.0f} s; now the lanes", flush=True)
    if len(lanes) == 1:
        run_stages(lanes[0], state_dir=args.out_dir, cwd=ROOT)
    else:
        run_lanes([a for a in argv if not a.startswith("--lane")], len(lanes))
    print(f"[study] all stages done at {time.time() - t0:.0f} s; writing the report", flush=True)
    from minirlhf.lab.study_report import write_report
    levers = LEVERS[:P.get("levers")] if "levers" in args.parts else []
    paths = write_report(args.out_dir, preset, P, levers, LEFT_OUT, wall_s=round(time.time() - t0, 1))
    print("[study] " + ", ".join(paths))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # lanes side by side: one thread per stage (set_cpu_threads)
    main()
