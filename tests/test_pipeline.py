"""The whole chain on a tiny model: lab data -> SFT -> labelled SFT samples -> reward model -> PPO.

    python -m pytest tests/test_pipeline.py -q

Checks the hand-offs between stages, PPO's first-minibatch ratio (exactly 1 up to float rounding), that a run
killed after a checkpoint and resumed ends bit-for-bit where an uninterrupted run ends, that a NaN loss stops
the run and keeps the last good checkpoint, and that bad data lines are rejected with file and line.
"""

import json
import math

import pytest
import torch

import train_ppo
import train_rm
import train_sft
from minirlhf.checkpoint import load_checkpoint
from minirlhf.data import DataError, write_jsonl
from minirlhf.lab import annotate
from minirlhf.lab.make_data import make_data
from minirlhf.training import parse_args

SFT = ["--init_from", "scratch:tiny", "--block_size", "96", "--batch_size", "8", "--micro_batch_size", "4",
       "--max_steps", "6", "--log_interval", "3", "--eval_interval", "3", "--ckpt_interval", "3"]


def ppo_flags(d, out):
    return ["--prompts", f"{d}/prompts_train.jsonl", "--eval_prompts", f"{d}/prompts_eval.jsonl",
            "--sft_ckpt", f"{d}/sft/ckpt.pt", "--rm_ckpt", f"{d}/rm/ckpt.pt", "--out_dir", out,
            "--num_iters", "4", "--batch_size", "8", "--num_minibatches", "2", "--micro_batch_size", "2",
            "--ppo_epochs", "2", "--max_new_tokens", "6", "--eval_interval", "2", "--ckpt_interval", "2"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Tiny lab data, an SFT model, SFT samples labelled by the simulated annotator, and a reward model."""
    d = tmp_path_factory.mktemp("lab")
    data = make_data(seed=0, n_sft=96, n_train_per_family=4, n_eval_per_family=1)
    for name, rows in data.items():
        write_jsonl(str(d / f"{name}.jsonl"), rows)
    train_sft.main(parse_args(train_sft.Args, SFT + ["--train_data", f"{d}/sft.jsonl", "--eval_data",
                                                     f"{d}/sft_eval.jsonl", "--out_dir", f"{d}/sft"]))
    annotate.main(["sample", "--ckpt", f"{d}/sft/ckpt.pt", "--prompts", f"{d}/prompts_train.jsonl",
                   "--out", f"{d}/samples.jsonl", "--k", "2", "--max_new_tokens", "12"])
    annotate.main(["label", "--samples", f"{d}/samples.jsonl", "--out", f"{d}/prefs.jsonl", "--labeller", "sim"])
    train_rm.main(parse_args(train_rm.Args, [
        "--train_data", f"{d}/prefs.jsonl", "--sft_ckpt", f"{d}/sft/ckpt.pt", "--out_dir", f"{d}/rm",
        "--batch_size", "8", "--max_steps", "4", "--eval_fraction", "0.25", "--norm_samples", "16",
        "--max_new_tokens", "12"]))
    return d


def read_log(path):
    return [json.loads(line) for line in open(path)]


def test_stages_hand_off_and_ppo_starts_at_ratio_one(lab, tmp_path):
    rm = load_checkpoint(f"{lab}/rm/ckpt.pt", expect="scalar")
    assert rm["stage"] == "rm" and rm["normalised"] and rm["reward_std"] > 0
    train_ppo.main(parse_args(train_ppo.Args, ppo_flags(lab, str(tmp_path / "ppo"))))
    log = read_log(tmp_path / "ppo" / "log.jsonl")
    assert [row["step"] for row in log] == [1, 2, 3, 4]
    for row in log:
        # PPO.md detail 1: rollout and update log-probs come from the same function on the same inputs
        assert row["policy/first_ratio_error"] < 1e-5
        for key in ("objective/rm_score", "objective/kl", "objective/kl_exact", "policy/approx_kl", "policy/clipfrac",
                    "policy/entropy",
                    "value/explained_var", "rollout/eos_rate", "lab/gold", "time/generate", "time/update"):
            assert math.isfinite(row[key]), key
    assert "eval/gold" in log[1] and "eval/gold" in log[3]
    ckpt = load_checkpoint(str(tmp_path / "ppo" / "ckpt.pt"), expect="gpt")
    assert ckpt["stage"] == "ppo" and ckpt["step"] == 4


def test_a_second_round_continues_from_the_first(lab, tmp_path, capsys):
    """Iterated RLHF: train_rm --init_from continues from the last reward model on several pair files, and
    train_ppo --policy_ckpt starts the policy from the last round's while the KL stays measured to SFT."""
    from minirlhf.checkpoint import load_model, save_checkpoint
    from minirlhf.data import left_pad
    # a reward model "trained" at lr 0 from the first round's is that model up to its new normalisation
    train_rm.main(parse_args(train_rm.Args, [
        "--train_data", f"{lab}/prefs.jsonl,{lab}/prefs.jsonl", "--sft_ckpt", f"{lab}/sft/ckpt.pt",
        "--init_from", f"{lab}/rm/ckpt.pt", "--out_dir", str(tmp_path / "rm2"), "--batch_size", "8",
        "--max_steps", "2", "--lr", "0", "--eval_fraction", "0.25", "--norm_samples", "16", "--max_new_tokens", "12"]))
    n_rows = sum(1 for _ in open(f"{lab}/prefs.jsonl"))
    n_eval = int(2 * n_rows * 0.25)
    assert f"{2 * n_rows - n_eval} training pairs" in capsys.readouterr().out  # both files were read
    old, tok, _ = load_model(f"{lab}/rm/ckpt.pt", expect="scalar")
    new, _, ckpt = load_model(str(tmp_path / "rm2" / "ckpt.pt"), expect="scalar")
    texts = ["Human: What is 2 + 3?\n\nAssistant: 2 + 3 = 5.", "x y"]
    ids, mask = left_pad([tok.encode(t) for t in texts], tok.pad_token)
    with torch.no_grad():
        expected, got = old(ids, mask)[:, -1], new(ids, mask)[:, -1] * ckpt["reward_std"] + ckpt["reward_mean"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)

    # PPO from another policy: the very first rollout already has KL to the reference; from SFT it has none
    sft, _, _ = load_model(f"{lab}/sft/ckpt.pt", expect="gpt")
    with torch.no_grad():
        for w in sft.parameters():
            w.add_(0.05 * torch.randn_like(w))
    save_checkpoint(str(tmp_path / "other.pt"), sft, stage="ppo", tokenizer_name=tok.name)
    kl = {}
    for name, extra in (("sft", []), ("other", ["--policy_ckpt", str(tmp_path / "other.pt")])):
        flags = ppo_flags(lab, str(tmp_path / f"ppo_{name}")) + extra
        flags[flags.index("--num_iters") + 1] = "1"
        train_ppo.main(parse_args(train_ppo.Args, flags))
        row = read_log(tmp_path / f"ppo_{name}" / "log.jsonl")[0]
        assert row["policy/first_ratio_error"] < 1e-5
        kl[name] = row["objective/kl"]
    assert abs(kl["sft"]) < 1e-5 and abs(kl["other"]) > 1e-3


class Killed(Exception):
    pass


def kill_after_first_checkpoint(module, monkeypatch):
    real = module.save_training_checkpoint

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(module, "save_training_checkpoint", save_then_die)


@pytest.mark.parametrize("stage", ["sft", "ppo"])
def test_resume_ends_where_an_uninterrupted_run_ends(lab, tmp_path, monkeypatch, stage):
    module = {"sft": train_sft, "ppo": train_ppo}[stage]
    flags = lambda out: (SFT + ["--train_data", f"{lab}/sft.jsonl", "--out_dir", out] if stage == "sft"
                         else ppo_flags(lab, out))
    module.main(parse_args(module.Args, flags(str(tmp_path / "straight"))))
    with monkeypatch.context() as m:
        kill_after_first_checkpoint(module, m)
        with pytest.raises(Killed):
            module.main(parse_args(module.Args, flags(str(tmp_path / "killed"))))
    assert load_checkpoint(str(tmp_path / "killed" / "ckpt.pt"))["step"] == 3 if stage == "sft" else 2
    module.main(parse_args(module.Args, flags(str(tmp_path / "killed")) + ["--resume", "true"]))
    a = load_checkpoint(str(tmp_path / "straight" / "ckpt.pt"))
    b = load_checkpoint(str(tmp_path / "killed" / "ckpt.pt"))
    assert a["step"] == b["step"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(lab, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = train_sft.sft_loss

    def loss_that_explodes(*args):
        calls["n"] += 1
        loss_sum, n = real(*args)
        return (loss_sum * float("nan") if calls["n"] > 8 else loss_sum), n  # 2 micro-batches per step

    monkeypatch.setattr(train_sft, "sft_loss", loss_that_explodes)
    out = tmp_path / "sft"
    with pytest.raises(FloatingPointError, match="train loss is nan at step 4"):
        train_sft.main(parse_args(train_sft.Args, SFT + ["--train_data", f"{lab}/sft.jsonl", "--out_dir", str(out)]))
    good = load_checkpoint(str(out / "ckpt.pt"))
    assert good["step"] == 3 and all(torch.isfinite(v).all() for v in good["model"].values())


def test_bad_data_lines_name_file_line_and_field(lab, tmp_path):
    bad = tmp_path / "prefs.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                   + json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    with pytest.raises(DataError, match=f"{bad}:2: field 'rejected' is missing"):
        train_rm.main(parse_args(train_rm.Args, ["--train_data", str(bad), "--sft_ckpt", f"{lab}/sft/ckpt.pt",
                                                 "--out_dir", str(tmp_path / "rm")]))
