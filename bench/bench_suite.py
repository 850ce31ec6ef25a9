"""The test suite's wall time, and its slowest tests: is `python -m pytest` still about two minutes on 2 cores?

    python bench/bench_suite.py                       # the whole suite, timed; -> bench/results/suite_cpu.json
    python bench/bench_suite.py --label without_new --ignore tests/test_lora.py tests/test_docs.py

It runs the suite once in a subprocess (`python -m pytest -q -p no:cacheprovider --durations=N`, plus --ignore
for each file given), measures the wall time from outside, and records it under --label in the results file
with pytest's own summary line and its slowest tests (setup and call phases, as pytest reports them), the CPU
time of the suite's processes (user + system, all of them: the end-to-end runs go on in the background beside
the other tests, so the wall time is less than the CPU time) and the load average just before the run. Other
labels in the file are kept, so one file holds, say, the suite with and without some files. Time it on an
otherwise quiet machine (a 1-minute load average near 0): the suite's own processes are the load it measures.

A time target is checked here, not by a timed assertion in a test: a test that fails on a slow machine tests the
machine.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results", "suite_cpu.json")


def parse_durations(output):
    """pytest's "slowest durations" lines -> [(seconds, phase, test id)], slowest first."""
    rows = []
    for line in output.splitlines():
        m = re.match(r"^\s*([0-9.]+)s (setup|call|teardown)\s+(\S+)", line)
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(3)))
    return rows


def summary_line(output):
    """The last line that says how many tests passed, e.g. '283 passed, 13 skipped in 186.12s'."""
    lines = [l.strip("= ") for l in output.splitlines() if re.search(r"\d+ (passed|failed)", l)]
    return lines[-1] if lines else ""


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--label", default="suite", help="the key this run is stored under in the results file")
    p.add_argument("--ignore", nargs="*", default=[], help="test files left out of this run")
    p.add_argument("--durations", type=int, default=15, help="how many of the slowest tests to record")
    p.add_argument("--results", default=RESULTS)
    args = p.parse_args()

    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--durations={args.durations}",
           *[f"--ignore={path}" for path in args.ignore]]
    print("$ " + " ".join(cmd), flush=True)
    load_before = os.getloadavg()[0]  # what else was running: 0 on a quiet machine
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # every descendant that was waited for
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    summary = summary_line(done.stdout)
    slowest = parse_durations(done.stdout)
    print(f"{summary}\nwall time {wall:.1f} s, CPU time {cpu:.1f} s (exit code {done.returncode}); "
          f"1-minute load average before: {load_before:.2f}\n\nslowest:")
    for seconds, phase, test in slowest:
        print(f"  {seconds:7.2f} s  {phase:8s} {test}")
    if done.returncode != 0:
        print(done.stdout[-3000:] + done.stderr[-2000:])

    results = json.load(open(args.results)) if os.path.exists(args.results) else {}
    results.update({"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__})
    results.setdefault("runs", {})[args.label] = {
        "command": " ".join(["python", *cmd[1:]]), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "load_before": round(load_before, 2), "exit_code": done.returncode,
        "summary": summary, "slowest": [{"seconds": s, "phase": ph, "test": t} for s, ph, t in slowest],
        "date": datetime.date.today().isoformat()}
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as f:
        json.dump(results, f, indent=1)
    print(f"-> {args.results} ({args.label})")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
