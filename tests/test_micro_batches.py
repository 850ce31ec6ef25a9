"""Gradient accumulation over length-sorted micro-batches is the one-batch step.

    python -m pytest tests/test_micro_batches.py -q

train_sft.py, train_rm.py and train_dpo.py sort a step's examples by length before cutting them into
micro-batches, so that each micro-batch pads only to its own longest sequence. The step must stay the sum over
all the batch's tokens (SFT) or pairs (RM, DPO): the reference is the same first step with micro_batch_size =
batch_size, one forward over the whole batch, nothing sorted, nothing accumulated. Same seed, so the same batch:
the logged loss and gradient norm must agree to float rounding. A micro-batch dropped, counted twice, or
normalised by its own size instead of the step's would move both.
"""

import json

import pytest

import train_dpo
import train_rm
import train_sft
from minirlhf.data import write_jsonl
from minirlhf.lab.make_data import make_data
from minirlhf.training import parse_args


def first_step(log_path):
    with open(log_path) as f:
        return json.loads(f.readline())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Lab SFT rows, pairs built from them (a row's response against the next row's), a tiny SFT model."""
    d = tmp_path_factory.mktemp("micro")
    rows = make_data(seed=0, n_sft=96, n_train_per_family=2, n_eval_per_family=1)["sft"]
    write_jsonl(str(d / "sft.jsonl"), rows)
    pairs = [{"prompt": a["prompt"], "chosen": a["response"], "rejected": b["response"]} for a, b in zip(rows, rows[1:])]
    lengths = {len(p["prompt"]) + len(p["rejected"]) for p in pairs}
    assert len(lengths) > 3, "pairs of several lengths, so that sorting moves something"
    write_jsonl(str(d / "pairs.jsonl"), pairs)
    train_sft.main(parse_args(train_sft.Args, [
        "--train_data", f"{d}/sft.jsonl", "--out_dir", f"{d}/sft", "--init_from", "scratch:tiny",
        "--block_size", "96", "--batch_size", "8", "--max_steps", "2", "--log_interval", "1"]))
    return d


def run(module, flags, out):
    module.main(parse_args(module.Args, flags + ["--out_dir", str(out), "--max_steps", "1", "--log_interval", "1"]))
    return first_step(f"{out}/log.jsonl")


@pytest.mark.parametrize("script", ["sft", "rm", "dpo"])
def test_sorted_micro_batches_give_the_one_batch_step(data, tmp_path, script):
    d = data
    if script == "sft":
        module, flags = train_sft, ["--train_data", f"{d}/sft.jsonl", "--init_from", "scratch:tiny", "--block_size",
                                    "96", "--batch_size", "8", "--seed", "3"]
    elif script == "rm":
        module, flags = train_rm, ["--train_data", f"{d}/pairs.jsonl", "--sft_ckpt", f"{d}/sft/ckpt.pt",
                                   "--batch_size", "8", "--eval_fraction", "0", "--norm_samples", "4",
                                   "--max_new_tokens", "4", "--seed", "3"]
    else:
        module, flags = train_dpo, ["--train_data", f"{d}/pairs.jsonl", "--sft_ckpt", f"{d}/sft/ckpt.pt",
                                    "--batch_size", "8", "--eval_fraction", "0", "--seed", "3"]
    whole = run(module, flags + ["--micro_batch_size", "8"], tmp_path / "whole")
    sorted_micro = run(module, flags + ["--micro_batch_size", "2"], tmp_path / "micro")
    for key in ("train/loss", "train/grad_norm"):
        assert sorted_micro[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-7), key
