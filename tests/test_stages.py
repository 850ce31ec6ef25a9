"""A pipeline stage forked from the torch-preloaded server runs as the printed command would in a fresh interpreter.

    python -m pytest tests/test_stages.py -q

minirlhf/stages.py runs `python script.py ...` and `python -m module ...` stages in a process forked from a
server that imported torch once, by runpy, instead of exec'ing a new interpreter. The reference is the same
command run by subprocess (a fresh interpreter): a probe script reports what it sees (argv, working directory,
sys.path[0], __name__, an environment variable changed after the server started, torch's thread count under
OMP_NUM_THREADS) and both must report the same. Exit codes must come back as Python's own: 0, the code of
sys.exit(N), 1 for an uncaught exception.
"""

import json
import subprocess
import sys

import pytest

from minirlhf.stages import run_command

PROBE = """
import json, os, sys
import torch
out = {"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "name": __name__,
       "env": os.environ.get("MINIRLHF_STAGE_PROBE"), "threads": torch.get_num_threads()}
with open(sys.argv[-1], "w") as f:
    json.dump(out, f)
code = os.environ.get("MINIRLHF_STAGE_EXIT", "0")
if code == "raise":
    raise RuntimeError("the probe fails")
sys.exit(int(code))
"""


@pytest.fixture
def probe(tmp_path, monkeypatch):
    (tmp_path / "stage_probe.py").write_text(PROBE)
    monkeypatch.setenv("MINIRLHF_STAGE_PROBE", "set just before the call")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path


@pytest.mark.parametrize("form", ["script", "module"])
def test_a_forked_stage_sees_what_a_fresh_interpreter_sees(probe, monkeypatch, form):
    head = [sys.executable, "stage_probe.py"] if form == "script" else [sys.executable, "-m", "stage_probe"]
    run_command(head + ["--flag", "x", str(probe / "first.json")], cwd=str(probe))  # the server is up by now
    monkeypatch.setenv("MINIRLHF_STAGE_PROBE", "changed since the server started")
    seen = {}
    for how in ("forked", "fresh"):
        out = probe / f"{how}.json"
        if how == "forked":
            run_command(head + ["--flag", "x", str(out)], cwd=str(probe))
        else:
            subprocess.run(head + ["--flag", "x", str(out)], cwd=str(probe), check=True)
        seen[how] = json.loads(out.read_text())
        seen[how]["argv"][-1] = "OUT"  # each run names its own output file
    assert seen["forked"] == seen["fresh"]
    assert seen["forked"]["env"] == "changed since the server started" and seen["forked"]["threads"] == 1


def test_exit_codes_come_back_as_the_interpreter_gives_them(probe, monkeypatch):
    cmd = [sys.executable, "stage_probe.py", str(probe / "out.json")]
    for exit_code, expected in (("0", 0), ("3", 3), ("raise", 1)):  # sys.exit(N) gives N, an exception 1
        monkeypatch.setenv("MINIRLHF_STAGE_EXIT", exit_code)
        if expected == 0:
            run_command(cmd, cwd=str(probe))
            continue
        with pytest.raises(subprocess.CalledProcessError) as failed:
            run_command(cmd, cwd=str(probe))
        assert failed.value.returncode == expected
