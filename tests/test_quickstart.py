"""The README's main command end to end, shrunk, and stopped the hard way halfway: `python quickstart.py` with a
tiny model and a few steps per stage, killed in the middle of the second round's PPO, then run again (about a
minute on one core, started in the background at collection by conftest.py: one pipeline serves every check).

The kill: `kill -9` of the quick start's own process only (not its process group); every process under it, the
PPO stage it was running included, must stop too (minirlhf/stages.py stops a stage with its pipeline), not run on. The rerun must
resume that PPO from its halfway checkpoint and finish it (not skip it as done, not start it over), its log.jsonl
must hold every iteration exactly once, and the final policy must be the one the same PPO command writes without
the interruption.

The pipeline: every stage of both rounds ran and handed off to the next (the second round's reward model continues
the first's on both rounds' pairs, its PPO continues the first round's policy), the annotators' noise is the
flag that says so, the report and plot are written, the command it prints to talk to the models runs, and
running the command once more skips every stage.

    python -m pytest tests/test_quickstart.py -q
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import torch

from minirlhf.checkpoint import load_checkpoint
from minirlhf.lab.world import FAMILIES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "tiny", "--sft_steps", "20", "--sft_batch_size", "8", "--label_prompts", "24", "--rm_steps", "3",
        "--rm_steps_next", "2", "--rm_batch_size", "16", "--ppo_iters", "4", "--ppo_epochs", "1",  # PPO: ckpt at 2, 4
        "--n_eval_prompts", "2", "--annotator_temperature", "0"]
STAGES = ["lab data", "SFT", "sample pairs", "label pairs", "reward model", "PPO",
          "sample pairs 2", "label pairs 2", "reward model 2", "PPO 2", "evaluation"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def live_descendants(pid):
    """Pids of the live processes under `pid`: its children, theirs, and so on (zombies left out). A stage may be
    a forked child of a fork server rather than a program of its own, so it is found by parentage, not by name."""
    parents = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]  # after the name, which may hold spaces
        except (OSError, ValueError):
            continue
        if state != "Z":
            parents[int(p)] = int(ppid)
    found, frontier = [], {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier}
        found += sorted(frontier)
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def logged_steps(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f if line.endswith("\n")]


def quickstart(out):
    cmd = [sys.executable, "quickstart.py", "--out_dir", str(out), *TINY]
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def in_background(tmp):
    """Every run this file checks (conftest.py starts it at collection, beside the other tests): the quick start
    killed with kill -9 in the middle of the last PPO, run again, the same PPO command uninterrupted, the printed
    sample.py command, and the quick start once more. -> (out, facts, the rerun's stdout, the third run's stdout)"""
    out, facts = tmp / "qs", {}
    cmd = [sys.executable, "quickstart.py", "--out_dir", str(out), *TINY]
    with open(tmp / "first.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 400
        while max(logged_steps(out / "ppo" / "log.jsonl"), default=0) < 3:  # out/ppo: the last round's PPO
            assert proc.poll() is None and time.time() < deadline, (tmp / "first.txt").read_text()[-3000:]
            time.sleep(0.05)
        started = live_descendants(proc.pid)  # the PPO stage, and whatever runs it
        os.kill(proc.pid, signal.SIGKILL)  # the quick start alone, not its stage's process group
        proc.wait()
    for _ in range(100):  # the stage gets SIGTERM from the kernel at once; give it 10 s to exit
        if not any(map(alive, started)):
            break
        time.sleep(0.1)
    facts["started_under_the_quickstart"] = started
    facts["outlived_the_kill"] = [pid for pid in started if alive(pid)]
    facts["logged_once_all_stopped"] = logged_steps(out / "ppo" / "log.jsonl")
    shutil.copy(out / "ppo" / "ckpt.pt", tmp / "ckpt_at_kill.pt")  # read by the test, before the rerun replaces it
    again = quickstart(out)

    # the same PPO command, uninterrupted, into another folder
    line = next(l for l in again.splitlines() if l.startswith("$ ") and f"--out_dir {out}/ppo " in l)
    ppo_cmd = shlex.split(line[2:])  # the stage's command as printed, without the --resume added to it
    ppo_cmd[ppo_cmd.index("--out_dir") + 1] = str(tmp / "ppo_whole")
    facts["whole"] = subprocess.run(ppo_cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)

    talk = [line.split() for line in again.splitlines() if line.strip().startswith("python sample.py")][0]
    facts["talk"] = subprocess.run([sys.executable, *talk[1:], "--prompt", "What is 2 + 3?", "--max_new_tokens", "4"],
                                   cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    facts["timings"] = json.loads((out / "timings.json").read_text())  # before the third run
    return out, facts, again, quickstart(out)  # the third run: everything is there, nothing runs


def test_killed_quickstart_stops_its_stage_and_the_rerun_resumes_ppo(background):
    out, facts, again, _ = background
    assert facts["started_under_the_quickstart"] and not facts["outlived_the_kill"], facts  # the stage died too
    assert facts["logged_once_all_stopped"] == [1, 2, 3], "the PPO stage ran on after the quick start was killed"
    assert load_checkpoint(str(out.parent / "ckpt_at_kill.pt"))["step"] == 2
    assert f"(unfinished: resuming from {out}/ppo/ckpt.pt)" in again
    assert again.count("(done earlier: skipped)") == len(STAGES) - 2  # all but the last PPO and the evaluation
    assert logged_steps(out / "ppo" / "log.jsonl") == list(range(1, 5))  # every iteration once
    resumed = load_checkpoint(str(out / "ppo" / "ckpt.pt"))
    assert resumed["step"] == 4

    # the same PPO command, uninterrupted: the same policy
    assert facts["whole"].returncode == 0, facts["whole"].stderr[-3000:]
    uninterrupted = load_checkpoint(str(out.parent / "ppo_whole" / "ckpt.pt"))
    for key, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_two_rounds_end_to_end_and_a_rerun_skips_every_stage(background):
    out, facts, printed, third = background
    done = facts["talk"]  # the command it prints to talk to the models
    assert done.returncode == 0 and "[SFT]" in done.stdout and "[PPO]" in done.stdout, done.stderr[-2000:]
    assert list(facts["timings"]) == ["PPO 2", "evaluation", "total"]  # what the rerun ran
    markers = [json.loads((out / "stages" / name).read_text()) for name in os.listdir(out / "stages")]
    assert sorted(m["name"] for m in markers) == sorted(STAGES) and all(m["state"] == "done" for m in markers)
    labelling = [line for line in printed.splitlines() if "minirlhf.lab.annotate label" in line]
    assert len(labelling) == 2 and all("--temperature 0.0 " in line for line in labelling)  # the annotators' noise
    assert len((out / "data" / "prompts_eval.jsonl").read_text().splitlines()) == 2 * len(FAMILIES)

    rm1, ppo1 = out / "round1" / "rm" / "ckpt.pt", out / "round1" / "ppo" / "ckpt.pt"
    rm2 = load_checkpoint(str(out / "rm" / "ckpt.pt"), expect="scalar")
    assert rm2["normalised"] and rm2["config"]["init_from"] == str(rm1)
    assert rm2["config"]["train_data"].split(",") == [str(out / "data" / "prefs.jsonl"),
                                                      str(out / "data" / "prefs_round2.jsonl")]
    ppo2 = load_checkpoint(str(out / "ppo" / "ckpt.pt"), expect="gpt")
    assert ppo2["config"]["policy_ckpt"] == str(ppo1) and ppo2["config"]["sft_ckpt"] == str(out / "sft" / "ckpt.pt")
    assert ppo2["config"]["rm_ckpt"] == str(out / "rm" / "ckpt.pt")
    labelled = [json.loads(line) for line in open(out / "data" / "prefs_round2.jsonl")]
    assert labelled and all({"prompt", "chosen", "rejected"} <= set(row) for row in labelled)

    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"SFT", "PPO", "rm_probe"} and report["SFT"]["kl"] == 0.0
    assert all(0.0 <= v <= 1.0 for v in report["rm_probe"].values())
    assert (out / "gold_vs_kl.png").stat().st_size > 1000

    assert third.count("(done earlier: skipped)") == len(STAGES)  # everything is there: nothing runs
