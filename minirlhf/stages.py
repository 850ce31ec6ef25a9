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
the pipeline is stopped (Ctrl-C, SIGTERM) or killed (kill -9), the running stage is stopped with it, not left
behind (tests/test_quickstart.py kills a quick start and checks that nothing under it runs on).

Each stage picks its thread count from the cores free when it starts (training.set_cpu_threads): two on a
quiet 2-core machine, one beside a busy core, the same digits either way.

A command of the form `python script.py ...` or `python -m module ...` (this interpreter) is not exec'd: it
runs in a process forked from a server that imported torch once (multiprocessing's "forkserver", torch
preloaded), as runpy runs a script: the same argv, working directory, environment and `__name__ ==
"__main__"`, in a process of its own, minus the 1.7 s that `import torch` takes on every fresh interpreter
(a quick start has 11 stages). The server never computes, so forking it is safe (a process that has run
OpenMP threads cannot be forked safely). Any other command (torchrun, ...) is exec'd as it is.
tests/test_stages.py checks a forked stage against the same command in a fresh interpreter.
"""

import json
import multiprocessing
import os
import runpy
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
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


def _stop_with(pipeline_pid):
    """In a forked stage: stop the stage's process group when the pipeline's process ends, however it ends.

    The stage's parent is the fork server, not the pipeline, and the server outlives a `kill -9` of the pipeline
    (every stage it forked holds a copy of the pipe it watches), so PR_SET_PDEATHSIG cannot do it. A pidfd of
    the pipeline (Linux >= 5.3) becomes readable when that process exits: a daemon thread waits on it, then sends
    SIGTERM to the stage's group. Once the stage is gone, the server and its resource tracker exit too."""
    if not hasattr(os, "pidfd_open"):
        return
    try:
        fd = os.pidfd_open(pipeline_pid)
    except ProcessLookupError:  # the pipeline is already gone
        os._exit(1)
    except OSError:
        return

    def wait():
        select.select([fd], [], [])
        os.killpg(os.getpgid(0), signal.SIGTERM)

    threading.Thread(target=wait, daemon=True).start()


def _run_python(cmd, cwd, env, pipeline_pid):
    """In the forked child: become the leader of a new process group (as start_new_session does), stop with the
    pipeline, take the caller's environment, then run `python script.py args` or `python -m module args` as
    the interpreter would."""
    os.setsid()
    _stop_with(pipeline_pid)
    os.environ.clear()
    os.environ.update(env)
    if env.get("OMP_NUM_THREADS", "").isdigit():  # a fresh interpreter's torch would have read it at import
        import torch
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    if cwd:
        os.chdir(cwd)
    if cmd[1] == "-m":
        sys.argv = [cmd[2], *cmd[3:]]  # run_module puts the module's file in argv[0], as `python -m` does
        sys.path[0] = os.getcwd()
        runpy.run_module(cmd[2], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(cmd[1:])
        sys.path[0] = os.path.dirname(os.path.abspath(cmd[1]))
        runpy.run_path(cmd[1], run_name="__main__")


_FORK_SERVER = None


def _fork_server():
    """The multiprocessing context whose server imported torch (started on first use, with the stage env)."""
    global _FORK_SERVER
    if _FORK_SERVER is None:
        _FORK_SERVER = multiprocessing.get_context("forkserver")
        # torch (1.7 s), the compiler stack the first optimizer imports (torch._dynamo, about 1 s) and triton
        # (0.2 s): imported once here rather than in every stage; a module missing here is skipped
        _FORK_SERVER.set_forkserver_preload(["torch", "torch._dynamo", "triton"])
    return _FORK_SERVER


class _Forked:
    """A forked stage with Popen's two methods that run_command needs."""

    def __init__(self, cmd, cwd, env):
        self.process = _fork_server().Process(target=_run_python, args=(cmd, cwd, env, os.getpid()))
        self.process.start()
        self.pid = self.process.pid

    def wait(self, timeout=None):
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired("stage", timeout)
        return self.process.exitcode


def _is_python(cmd):
    return len(cmd) >= 2 and cmd[0] == sys.executable and (cmd[1].endswith(".py") or (cmd[1] == "-m" and len(cmd) >= 3))


def run_command(cmd, cwd=None):
    """Run cmd in its own process group; if we are interrupted, stop the whole group before re-raising; if we
    are killed outright, the command stops too (a forked stage by _stop_with, an exec'd one by _die_with_parent)."""
    env = dict(os.environ)
    if _is_python(cmd):
        proc = _Forked(cmd, cwd, env)
    else:
        parent = os.getpid()
        preexec = (lambda: _die_with_parent(parent)) if sys.platform.startswith("linux") else None
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True, preexec_fn=preexec)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        code = proc.wait()
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
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


def run_stages_apart(stages, state_dirs, jobs, cwd=None):
    """Independent stages, `jobs` at a time, each a pipeline of one with its own state folder (the benchmarks'
    sweeps): a rerun skips those that finished, whatever order they ran in. Give each stage one thread (--threads 1
    or OMP_NUM_THREADS=1): side by side, one-thread processes use the cores better than threads would."""
    with ProcessPoolExecutor(jobs) as pool:
        for _ in pool.map(run_stages, [[stage] for stage in stages], state_dirs, [cwd] * len(stages)):
            pass
