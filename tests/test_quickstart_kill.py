"""The quick start killed in the middle of PPO, then run again (a tiny model, one round; about 30 s on 2 cores).

`kill -9` of the quick start's own process only (not its process group): the PPO stage it was running must stop
too (the kernel's parent-death signal), not run on. The rerun must resume PPO from its iteration-10 checkpoint and
finish it (not skip it as done, not start it over), its log.jsonl must hold every iteration exactly once, and the
final policy must be the one PPO writes without the interruption.

    python -m pytest tests/test_quickstart_kill.py -q
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import torch

from minirlhf.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--model", "tiny", "--sft_steps", "20", "--label_prompts", "24", "--rm_steps", "3", "--rounds", "1",
         "--ppo_iters", "14"]


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


def test_killed_quickstart_stops_its_stage_and_the_rerun_resumes_ppo(tmp_path):
    out = tmp_path / "qs"
    cmd = [sys.executable, "quickstart.py", "--out_dir", str(out), *FLAGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "first.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 400
        while max(logged_steps(out / "ppo" / "log.jsonl"), default=0) < 11:
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "first.txt").read_text()[-3000:]
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the quick start alone, not its stage's process group
        proc.wait()
    ppo = f"--out_dir {out}/ppo"
    for _ in range(100):  # the stage gets SIGTERM from the kernel at once; give it 10 s to exit
        if not running(ppo):
            break
        time.sleep(0.1)
    assert not running(ppo), "the PPO stage outlived the killed quick start"
    assert load_checkpoint(str(out / "ppo" / "ckpt.pt"))["step"] == 10

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"(unfinished: resuming from {out}/ppo/ckpt.pt)" in again.stdout
    assert again.stdout.count("(done earlier: skipped)") == 5  # data, SFT, sampling, labelling, reward model
    assert logged_steps(out / "ppo" / "log.jsonl") == list(range(1, 15))  # every iteration once
    resumed = load_checkpoint(str(out / "ppo" / "ckpt.pt"))
    assert resumed["step"] == 14

    # the same PPO command, uninterrupted, into another folder: the same policy
    line = next(l for l in again.stdout.splitlines() if l.startswith("$ ") and "train_ppo.py" in l)
    ppo_cmd = shlex.split(line[2:])  # the stage's command as printed, without the --resume added to it
    ppo_cmd[ppo_cmd.index("--out_dir") + 1] = str(tmp_path / "ppo_whole")
    whole = subprocess.run(ppo_cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    uninterrupted = load_checkpoint(str(tmp_path / "ppo_whole" / "ckpt.pt"))
    for key, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][key], value), key
