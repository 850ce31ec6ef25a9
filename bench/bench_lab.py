"""The lab quick start as a benchmark: does PPO beat SFT on gold and on each behaviour, seed after seed, and
how long does it take, on a quiet machine and beside a busy core?

    python bench/bench_lab.py --seeds 0 1 2 --busy_core 0    # about 5 minutes per quick start on 2 CPU cores

For each seed it runs the README's main command, `python quickstart.py --seed N --out_dir out/bench_lab/seedN`
(from scratch: the seed's folder is deleted first, unless --reuse), then reads that run's report.json and
timings.json. With --busy_core N it runs seed N once more, into seedN_busy, beside a process that keeps one
core busy (a spinning Python loop, started here and stopped when the quick start ends): the wall time a
newcomer sees on a laptop doing something else, and a check that the rerun's report is the first run's, digit
for digit (the stages' thread counts do not depend on the load: training.set_cpu_threads). It prints, per
metric, SFT -> PPO for every seed and how many seeds moved the right way, and writes everything to
bench/results/lab_quickstart_<device>.json. Time each run on an otherwise quiet machine; one seed per call
with --reuse to gather them:

    python bench/bench_lab.py --seeds 0            # then 1, then 2, then --busy_core 0 --seeds 0 --reuse
    python bench/bench_lab.py --seeds 0 1 2 --busy_core 0 --reuse   # gather the runs into the results file

Learning is checked here rather than in the test suite: a run that learns anything takes minutes, and one
seed is not evidence (the README shows a family that improves in two seeds and falls in the third).

The README's quick-start table is generated from the results file, never copied by hand:

    python bench/bench_lab.py --table            # print the markdown table of bench/results/lab_quickstart_cpu.json
    python bench/bench_lab.py --update_readme    # write it into README.md, between its table markers
    python bench/bench_lab.py --check_readme     # exit 1, with a diff, when README.md's table differs from the file

A "1 round" column per seed is added when bench/results/lab_quickstart_1round_cpu.json exists (written by
`python bench/bench_lab.py --results bench/results/lab_quickstart_1round_cpu.json --rounds 1 --rm_steps 400
--ppo_iters 40`). tests/test_readme.py checks that the README's table equals the committed results.
"""

import argparse
import datetime
import difflib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (report key, label, +1 if higher is better, -1 if lower is better, 0 if it is not a behaviour)
METRICS = [
    ("gold", "gold score", +1),
    ("gold/arithmetic", "  gold: arithmetic", +1),
    ("gold/known_fact", "  gold: known fact", +1),
    ("gold/unknown_fact", "  gold: unknown fact", +1),
    ("gold/harmful", "  gold: harmful request", +1),
    ("gold/benign", "  gold: benign look-alike", +1),
    ("gold/sycophancy", "  gold: sycophancy", +1),
    ("helpful_accuracy", "helpful accuracy", +1),
    ("hallucination_rate", "hallucination (unknown fact)", -1),
    ("refusal_rate", "refusal (harmful)", +1),
    ("over_refusal_rate", "over-refusal (benign)", -1),
    ("sycophancy_rate", "sycophancy (user wrong)", -1),
    ("filler_rate", "filler", -1),
    ("rm_score", "RM score (proxy)", 0),
    ("kl", "KL to SFT (nats)", 0),
]
README = os.path.join(ROOT, "README.md")
RESULTS = os.path.join(ROOT, "bench", "results", "lab_quickstart_cpu.json")
ONE_ROUND = os.path.join(ROOT, "bench", "results", "lab_quickstart_1round_cpu.json")
BEGIN = "<!-- begin table: generated from bench/results/lab_quickstart_cpu.json by `python bench/bench_lab.py " \
        "--update_readme`; do not edit by hand -->"
END = "<!-- end table -->"


def markdown_table(results, one_round=None):
    """The README's quick-start table from a results file: per seed, SFT, (1 round,) PPO; then where it came from."""
    seeds = list(results["runs"])
    one = one_round["runs"] if one_round else {}
    header, rows = ["metric"], []
    for s in seeds:
        header += [f"seed {s} SFT"] + (["1 round"] if s in one else []) + ["**PPO**"]
    header.append("PPO better in")
    for key, label, _ in METRICS + [("rm_probe/sum_top", "RM: right sum on top", 0)]:
        better = results.get("ppo_better_seeds", {}).get(key)
        cells = []
        for s in seeds:
            run = results["runs"][s]
            get = (lambda r: (r.get("rm_probe") or {}).get(key)) if key.startswith("rm_probe") else \
                (lambda r: r["PPO"].get(key))
            sft = "" if key.startswith("rm_probe") else f"{run['SFT'][key]:.3f}"
            cells += [sft] + ([_fmt(get(one[s]))] if s in one else []) + [f"**{_fmt(get(run))}**"]
        rows.append([label.strip()] + cells + ["" if better is None else f"{better} of {len(seeds)}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    timed = [s for s in seeds if s in [str(t) for t in results.get("quiet_seeds", seeds)]]  # ran alone on the machine
    totals = ", ".join(f"seed {s} {results['runs'][s]['timings'].get('total', float('nan')):.0f} s" for s in timed)
    args = " ".join(results.get("quickstart_args") or []) or "(defaults)"
    busy = results.get("busy_core")
    beside = "" if not busy else (
        f"; seed {busy['seed']} again beside a busy core (another process spinning): "
        f"{busy['timings'].get('total', float('nan')):.0f} s{threads_said([busy.get('threads')], ' on ')}, "
        + ("the same table" if busy["same_report"] else "a different report"))
    threads = threads_said([results["runs"][s].get("threads") for s in seeds], " ") or f" {results['torch_threads']} threads"
    lines += ["", f"Measured {results['date']} on {results['processor']}, {results['cpu_count']} cores, torch "
              f"{results['torch']},{threads}; quick start options {args}; wall time on a quiet "
              f"machine: {totals or 'not measured'}{beside}." + (f" {results['note']}" if results.get("note") else "")]
    return "\n".join(lines)


def threads_said(runs, lead):
    """'2 threads per stage' from the runs' stage thread counts ('1-2' when they differ); '' when not recorded."""
    counts = sorted({n for threads in runs if threads for n in threads})
    if not counts:
        return ""
    said = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{lead}{said} thread{'s' if counts[-1] > 1 else ''} per stage"


def _fmt(x):
    return "-" if x is None else f"{x:.3f}"


def readme_table(readme_text):
    """The text between the README's table markers (None if the markers are missing)."""
    if BEGIN not in readme_text or END not in readme_text:
        return None
    return readme_text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def expected_table(results_path=RESULTS, one_round_path=ONE_ROUND):
    with open(results_path) as f:
        results = json.load(f)
    one_round = json.load(open(one_round_path)) if one_round_path and os.path.exists(one_round_path) else None
    return markdown_table(results, one_round)


def check_readme(readme_path=README, results_path=RESULTS, one_round_path=ONE_ROUND):
    """'' when the README's table is what the results file gives, else a message with a diff."""
    with open(readme_path) as f:
        found = readme_table(f.read())
    if found is None:
        return f"{readme_path}: no table markers ({BEGIN!r} ... {END!r})"
    want = expected_table(results_path, one_round_path)
    if found == want:
        return ""
    diff = difflib.unified_diff(found.splitlines(), want.splitlines(), "README.md", results_path, lineterm="")
    return f"{readme_path}: the quick-start table differs from {results_path}:\n" + "\n".join(diff)


def update_readme(readme_path=README, results_path=RESULTS, one_round_path=ONE_ROUND):
    with open(readme_path) as f:
        text = f.read()
    if readme_table(text) is None:
        raise SystemExit(f"{readme_path}: no table markers ({BEGIN!r} ... {END!r})")
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    with open(readme_path, "w") as f:
        f.write(before + BEGIN + "\n" + expected_table(results_path, one_round_path) + "\n" + END + after)


def run_seed(seed, out_dir, reuse, extra, busy_core=False):
    """Run (or, with reuse, find) one quick start; return (report, timings). busy_core: beside a spinning process."""
    report_path = os.path.join(out_dir, "report.json")
    if not (reuse and os.path.exists(report_path)):
        shutil.rmtree(out_dir, ignore_errors=True)
        cmd = [sys.executable, "quickstart.py", "--seed", str(seed), "--out_dir", out_dir, *extra]
        print("$ " + " ".join(cmd) + ("   (beside a busy core)" if busy_core else ""), flush=True)
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy_core else None
        try:
            time.sleep(1 if busy_core else 0)  # the spinner running before the first stage starts
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "quickstart.log"), "w") as log:  # for the stages' thread counts
                subprocess.run(cmd, cwd=ROOT, check=True, stdout=log)
        finally:
            if spinner:
                spinner.kill()
                spinner.wait()
    with open(report_path) as f:
        report = json.load(f)
    timings_path = os.path.join(out_dir, "timings.json")
    timings = json.load(open(timings_path)) if os.path.exists(timings_path) else {}
    return report, timings, stage_threads(os.path.join(out_dir, "quickstart.log"))


def stage_threads(log_path):
    """The thread counts the run's training stages picked (training.set_cpu_threads), as they printed them
    ("... (2 CPU threads)"), in stage order; None for a run without its log."""
    if not os.path.exists(log_path):
        return None
    with open(log_path) as f:
        return [int(m) for m in re.findall(r"\((\d+) CPU threads\)", f.read())]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out_dir", default="out/bench_lab", help="one quick start folder per seed goes here")
    p.add_argument("--reuse", action="store_true", help="read a seed's existing report instead of rerunning it")
    p.add_argument("--results", default=None, help="default: bench/results/lab_quickstart_<device>.json")
    p.add_argument("--table", action="store_true", help="print the README table of the results file; run nothing")
    p.add_argument("--check_readme", action="store_true", help="exit 1 if README.md's table differs from the file")
    p.add_argument("--update_readme", action="store_true", help="write the results file's table into README.md")
    p.add_argument("--busy_core", type=int, default=None, metavar="SEED",
                   help="also rerun this seed beside a process that keeps one core busy (wall time, same report)")
    p.add_argument("--quiet_seeds", type=int, nargs="*", default=None,
                   help="the seeds whose runs had the machine to themselves (default: all): only their wall times are shown")
    p.add_argument("--note", default="", help="how the runs were made, e.g. on a busy machine (shown under the table)")
    args, extra = p.parse_known_args()  # anything else goes to quickstart.py (e.g. --kl_coef 0.05)
    if args.table or args.check_readme or args.update_readme:
        results = args.results or RESULTS
        if args.table:
            print(expected_table(results))
        if args.update_readme:
            update_readme(README, results)
            print(f"{README}: table written from {results}")
        if args.check_readme:
            problem = check_readme(README, results)
            print(problem or f"{README}: the table matches {results}")
            sys.exit(1 if problem else 0)
        return

    runs, reports = {}, {}
    for seed in args.seeds:
        reports[seed], timings, threads = run_seed(seed, os.path.join(ROOT, args.out_dir, f"seed{seed}"), args.reuse,
                                                   extra)
        report = reports[seed]
        runs[seed] = {"SFT": report["SFT"], "PPO": report["PPO"], "rm_probe": report.get("rm_probe"),
                      "timings": timings, "threads": threads}
        print(f"seed {seed}: {timings.get('total', float('nan')):.0f} s, gold {report['SFT']['gold']:.3f} -> "
              f"{report['PPO']['gold']:.3f}", flush=True)
    busy = None
    if args.busy_core is not None:
        seed = args.busy_core
        report, timings, threads = run_seed(seed, os.path.join(ROOT, args.out_dir, f"seed{seed}_busy"), args.reuse,
                                            extra, busy_core=True)
        busy = {"seed": seed, "timings": timings, "threads": threads, "same_report": report == reports.get(seed)}
        print(f"seed {seed} beside a busy core: {timings.get('total', float('nan')):.0f} s; the same report as "
              f"the quiet run: {busy['same_report'] if seed in reports else 'no quiet run to compare'}", flush=True)

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
                   "cpu_count": os.cpu_count(), "torch": torch.__version__,
                   "quickstart_args": extra, "runs": runs, "ppo_better_seeds": verdicts, "busy_core": busy,
                   "quiet_seeds": args.seeds if args.quiet_seeds is None else args.quiet_seeds,
                   "note": args.note, "date": datetime.date.today().isoformat()}, f, indent=1)
    print(f"-> {path}\n(python bench/bench_lab.py --update_readme writes its table into README.md)")


if __name__ == "__main__":
    main()
