"""The README's main command end to end, shrunk: `python quickstart.py` with a tiny model and a few steps per
stage (about 40 s on 2 cores). Checks that every stage of both rounds runs and hands off to the next (the
second round's reward model continues the first's on both rounds' pairs, its PPO continues the first round's
policy), that the report and plot are written, that the command it prints to talk to the models runs, and that
running the command again skips every finished stage.

    python -m pytest tests/test_quickstart.py -q
"""

import json
import os
import subprocess
import sys

from minirlhf.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "tiny", "--sft_steps", "20", "--label_prompts", "24", "--rm_steps", "3", "--rm_steps_next", "2",
        "--ppo_iters", "1"]
STAGES = ["lab data", "SFT", "sample pairs", "label pairs", "reward model", "PPO",
          "sample pairs 2", "label pairs 2", "reward model 2", "PPO 2", "evaluation"]


def quickstart(out):
    cmd = [sys.executable, "quickstart.py", "--out_dir", str(out), *TINY]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_two_rounds_end_to_end_and_a_rerun_skips_every_stage(tmp_path):
    out = tmp_path / "qs"
    printed = quickstart(out)
    talk = [line.split() for line in printed.splitlines() if line.strip().startswith("python sample.py")][0]
    done = subprocess.run([sys.executable, *talk[1:], "--prompt", "What is 2 + 3?", "--max_new_tokens", "4"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "[SFT]" in done.stdout and "[PPO]" in done.stdout, done.stderr[-2000:]
    assert list(json.loads((out / "timings.json").read_text())) == STAGES + ["total"]

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
