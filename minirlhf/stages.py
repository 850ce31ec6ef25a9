"""Pipelines of commands that survive being stopped: the quick start and the lab studies run through this.

A stage is one of the project's own commands (printed before it runs, so a pipeline is also its recipe). It
counts as done only once its command has *finished*: then, and only then, a marker file records the command
line and how long it took. A stage's outputs existing proves nothing (training writes a checkpoint every few
steps, labelling appends line by line), so a killed pipeline, rerun, goes back into the stage it was in:

- a stage with `resume_dir` (a training script's out_dir) continues from the checkpoint there, if one was
  written (`--resume true`), and otherwise starts again;
- any other stage runs again from the start (they are short, and write their outputs atomically).

A stage started or finished with another command (other flags, same output folder) is an error, not a
silent rerun over the old outputs: nothing on disk is lost. Each command runs in its own process group: when
the pipeline is stopped (Ctrl-C, SIGTERM), the running stage is stopped with it, not left behind.

Each command runs with OMP_WAIT_POLICY=PASSIVE unless the environment says otherwise: torch's threads then
sleep, rather than spin, while they wait for each other. It changes no number, only speed: beside a busy
core a spinning thread takes CPU time from the thread it waits for (see training.set_cpu_threads).
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from minirlhf.files import atomic_write


@dataclass
class Stage:
    name: str
    cmd: list
    resume_dir: str = ""  # a training script's out_dir: rerun with --resume true when it holds a checkpoint
    meta: dict = field(default_factory=dict)  # free-form, e.g. the round number (not part of "done")


def marker_path(state_dir, name):
    slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    return os.path.join(state_dir, "stages", f"{slug}.json")


class StageConflict(RuntimeError):
    pass


def stage_state(stage, state_dir):
    """'new', 'started' (begun, never finished) or 'done'; raises StageConflict if that was another command."""
    path = marker_path(state_dir, stage.name)
    if not os.path.exists(path):
        return "new"
    with open(path, encoding="utf-8") as f:
        marker = json.load(f)
    if marker.get("cmd") != stage.cmd:
        raise StageConflict(
            f"stage {stage.name!r} was {marker.get('state', 'done')} in {state_dir} with another command:\n"
            f"  then: {shlex.join(marker.get('cmd', []))}\n  now:  {shlex.join(stage.cmd)}\n"
            f"Use another --out_dir, or delete {state_dir} to start over.")
    return marker.get("state", "done")


def _write_marker(stage, state_dir, state, seconds=None):
    marker = {"name": stage.name, "cmd": stage.cmd, "state": state, "seconds": seconds}
    atomic_write(marker_path(state_dir, stage.name), lambda f: json.dump(marker, f), mode="w")


def _die_with_parent(parent_pid):
    """Run in the child between fork and exec: ask Linux to send it SIGTERM when its parent dies.

    The pipeline stops its stage itself on Ctrl-C or SIGTERM (run_command), but `kill -9` of the pipeline
    alone gives it no chance to; the stage, in its own process group, would go on running (and writing).
    PR_SET_PDEATHSIG makes the kernel deliver the signal, whatever killed the parent; no polling, no helper
    process. If the parent is already gone (it died before this ran), exit at once. Elsewhere than Linux, a
    no-op: stop a stage there with its process group.
    """
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os._exit(1)


def run_command(cmd, cwd=None):
    """Run cmd in its own process group; if we are interrupted, stop the whole group before re-raising; if we
    are killed outright, the kernel stops the command (_die_with_parent)."""
    parent = os.getpid()
    preexec = (lambda: _die_with_parent(parent)) if sys.platform.startswith("linux") else None
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True, preexec_fn=preexec)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        code = proc.wait()
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code != 0:
        raise subprocess.CalledProcessError(code, cmd)


def run_stages(stages, state_dir, cwd=None):
    """Run the stages in order, skipping those already done; returns {name: seconds} for the ones run now."""
    timings = {}
    for stage in stages:
        cmd = list(stage.cmd)
        print(f"\n=== {stage.name}\n$ {shlex.join(cmd)}", flush=True)
        state = stage_state(stage, state_dir)
        if state == "done":
            print("(done earlier: skipped)", flush=True)
            continue
        if state == "started" and stage.resume_dir and os.path.exists(os.path.join(stage.resume_dir, "ckpt.pt")):
            cmd += ["--resume", "true"]
            print(f"(unfinished: resuming from {stage.resume_dir}/ckpt.pt)", flush=True)
        elif state == "started":
            print("(unfinished: running again from the start)", flush=True)
        _write_marker(stage, state_dir, "started")
        t0 = time.time()
        run_command(cmd, cwd)
        timings[stage.name] = round(time.time() - t0, 1)
        _write_marker(stage, state_dir, "done", timings[stage.name])
    return timings
