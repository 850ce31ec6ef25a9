"""The README's main command end to end, shrunk, and stopped the hard way halfway: `python quickstart.py` with a
tiny model and a few steps per stage, killed in the middle of the second round's PPO, then run again (about
60 s on 2 cores: one pipeline serves every check below).

The kill: `kill -9` of the quick start's own process only (not its process group); the PPO stage it was running
must stop too (the kernel's parent-death signal), not run on. The rerun must resume that PPO from its halfway
checkpoint and finish it (not skip it as done, not start it over), its log.jsonl must hold every iteration
exactly once, and the final policy must be the one the same PPO command writes without the interruption.

The pipeline: every stage of both rounds ran and handed off to the next (the second round's reward model continues
the first's on both rounds' pairs, its PPO continues the first round's policy), the annotators' noise is the
flag that says so, the report and plot are written, the command it prints to talk to the models runs, and
running the command once more skips every stage.

    python -m pytest tests/test_quickstart.py -q
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from minirlhf.checkpoint import load_checkpoint
from minirlhf.lab.world import FAMILIES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "tiny", "--sft_steps", "20", "--label_prompts", "24", "--rm_steps", "3", "--rm_steps_next", "2",
        "--ppo_iters", "4", "--n_eval_prompts", "2", "--annotator_temperature", "0"]  # PPO checkpoints at 2 and 4
STAGES = ["lab data", "SFT", "sample pairs", "label pairs", "reward model", "PPO",
          "sample pairs 2", "label pairs 2", "reward model 2", "PPO 2", "evaluation"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def running(pattern):
    """Pids of live processes whose command line contains `pattern` (zombies have an empty command line)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if pattern in f.read().replace(b"\0", b" ").decode(errors="replace"):  # arguments end in NULs
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


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


@pytest.fixture(scope="module")
def killed_then_rerun(tmp_path_factory):
    """Start the quick start, kill -9 it in the middle of the last PPO, run it again: (out, facts, rerun's stdout)."""
    tmp = tmp_path_factory.mktemp("quickstart")
    out, facts = tmp / "qs", {}
    cmd = [sys.executable, "quickstart.py", "--out_dir", str(out), *TINY]
    with open(tmp / "first.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 400
        while max(logged_steps(out / "ppo" / "log.jsonl"), default=0) < 3:  # out/ppo: the last round's PPO
            assert proc.poll() is None and time.time() < deadline, (tmp / "first.txt").read_text()[-3000:]
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the quick start alone, not its stage's process group
        proc.wait()
    for _ in range(100):  # the stage gets SIGTERM from the kernel at once; give it 10 s to exit
        if not running(f"--out_dir {out}/ppo"):
            break
        time.sleep(0.1)
    facts["stage_outlived_the_kill"] = bool(running(f"--out_dir {out}/ppo"))
    facts["step_at_kill"] = load_checkpoint(str(out / "ppo" / "ckpt.pt"))["step"]
    return out, facts, quickstart(out)


def test_killed_quickstart_stops_its_stage_and_the_rerun_resumes_ppo(killed_then_rerun, tmp_path):
    out, facts, again = killed_then_rerun
    assert not facts["stage_outlived_the_kill"], "the PPO stage outlived the killed quick start"
    assert facts["step_at_kill"] == 2
    assert f"(unfinished: resuming from {out}/ppo/ckpt.pt)" in again
    assert again.count("(done earlier: skipped)") == len(STAGES) - 2  # all but the last PPO and the evaluation
    assert logged_steps(out / "ppo" / "log.jsonl") == list(range(1, 5))  # every iteration once
    resumed = load_checkpoint(str(out / "ppo" / "ckpt.pt"))
    assert resumed["step"] == 4

    # the same PPO command, uninterrupted, into another folder: the same policy
    line = next(l for l in again.splitlines() if l.startswith("$ ") and f"--out_dir {out}/ppo " in l)
    ppo_cmd = shlex.split(line[2:])  # the stage's command as printed, without the --resume added to it
    ppo_cmd[ppo_cmd.index("--out_dir") + 1] = str(tmp_path / "ppo_whole")
    whole = subprocess.run(ppo_cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    uninterrupted = load_checkpoint(str(tmp_path / "ppo_whole" / "ckpt.pt"))
    for key, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_two_rounds_end_to_end_and_a_rerun_skips_every_stage(killed_then_rerun):
    out, _, printed = killed_then_rerun
    talk = [line.split() for line in printed.splitlines() if line.strip().startswith("python sample.py")][0]
    done = subprocess.run([sys.executable, *talk[1:], "--prompt", "What is 2 + 3?", "--max_new_tokens", "4"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "[SFT]" in done.stdout and "[PPO]" in done.stdout, done.stderr[-2000:]
    assert list(json.loads((out / "timings.json").read_text())) == ["PPO 2", "evaluation", "total"]  # run now
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

    again = quickstart(out)  # everything is there: nothing runs
    assert again.count("(done earlier: skipped)") == len(STAGES)
