"""study.py end to end, shrunk to seconds: the `tiny` preset (tiny model, a few steps per stage, one reward
model) runs every kind of stage (lab data, SFT, sampling, gold and simulated labels, RM, best-of-n, PPO in kept
segments, held-out judging of the kept policies, DPO, evaluation) in two lanes, writes study.json, report.md and
both figures, and a rerun skips every stage. The long PPO run's per-rollout gold scores (rollout_gold.jsonl)
average to its log's lab/gold; bad --seeds / --parts are refused by name. The study and its rerun start in the
background at collection (conftest.py), beside the other tests.

    python -m pytest tests/test_study.py -q
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ)  # taken at import: the runs go on in the background while other tests monkeypatch os.environ


def study(out):
    cmd = [sys.executable, "study.py", "--preset", "tiny", "--model", "tiny", "--out_dir", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def in_background(tmp):
    """The study, then the same command again. -> (out, the rerun's stdout)"""
    out = tmp / "study"
    study(out)
    return out, study(out)


def test_tiny_study_end_to_end_and_rerun(background):
    out, again = background
    result = json.loads((out / "study.json").read_text())
    markers = os.listdir(out / "stages")
    assert len(markers) == 14 and all(json.loads((out / "stages" / m).read_text())["state"] == "done" for m in markers)

    bon = result["overopt"]["clean"]["bon"]
    assert [r["n"] for r in bon["curve"]] == [1, 2, 4]
    assert bon["curve"][0]["kl_measured"] == 0.0 and bon["curve"][0]["gold"] == result["overopt"]["clean"]["sft_gold"]
    assert all(0 <= r["kl_measured"] <= r["kl_analytic"] + 1e-9 for r in bon["curve"])  # ties only lower the KL
    assert {"alpha", "beta", "r2", "kl_peak"} <= set(bon["fit"])
    ppo = result["overopt"]["clean"]["ppo"]["0"]  # the long PPO run, beta 0: its kept policies, judged held-out
    assert ppo["source"] == "held-out" and [p["iter"] for p in ppo["points"]] == [0, 1, 2]
    assert ppo["points"][0]["kl"] == 0.0 and ppo["start_gold"] == ppo["points"][0]["gold"]
    assert list(result["overopt_seeds"]["clean"]) == ["0"] and "best-of-n" in result["overopt_summary"]["clean"]
    run = out / "ppo" / "clean_s0_kl0_long"
    assert sorted(os.listdir(run)) == ["ckpt.pt", "ckpt_it1.pt", "ckpt_it2.pt", "log.jsonl", "rollout_gold.jsonl"]
    golds = [json.loads(line) for line in (run / "rollout_gold.jsonl").read_text().splitlines()]
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [g["step"] for g in golds] == [r["step"] for r in logged] == [1, 2]
    for g, r in zip(golds, logged):
        assert len(g["gold"]) == 8 and abs(sum(g["gold"]) / 8 - r["lab/gold"]) < 1e-9

    (baseline,) = result["levers"]
    assert baseline["lever"] == "baseline" and 0 <= baseline["rm_accuracy"] <= 1 and baseline["kl"] is not None
    assert {"SFT", "DPO", "BoN1", "PPO beta 0.1", "PPO beta 0 (long)"} <= set(result["tax"])
    assert result["tax"]["SFT"]["kl"] == 0.0 and 1 <= result["tax"]["SFT"]["diversity"] <= 2
    report = (out / "report.md").read_text()
    assert "## The four levers" in report and "## The alignment tax" in report
    assert (out / "overopt.png").stat().st_size > 1000 and (out / "levers.png").stat().st_size > 1000

    assert again.count("(done earlier: skipped)") == 14


def test_bad_seeds_and_parts_are_refused_by_name(tmp_path):
    for flags, name in ((["--seeds", "0,x"], "--seeds"), (["--parts", "overopt,levers,nope"], "--parts")):
        cmd = [sys.executable, "study.py", "--preset", "tiny", "--out_dir", str(tmp_path), *flags]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and name in done.stderr, done.stderr
