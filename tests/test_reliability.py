"""What happens when things go wrong, on files: nothing non-finite is saved, loading a checkpoint runs no code, a
checkpoint carries its tokenizer, a finished run is not overwritten and a resumed log has no step twice, bad
input names file and line, a full disk or a kill leaves no temporary file, and a killed labelling or data stage
reruns to what an uninterrupted one writes.

    python -m pytest tests/test_reliability.py -q
"""

import errno
import json
import os
import random
import sys

import numpy as np
import pytest
import torch

import train_sft
from minirlhf.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from minirlhf.data import DataError, read_jsonl, write_jsonl
from minirlhf.lab.annotate import SimulatedAnnotator, label_pairs, make_pairs
from minirlhf.lab.make_data import make_data
from minirlhf.model import GPT, GPTConfig
from minirlhf.stages import Stage, _write_marker, run_stages
from minirlhf.tokenizer import get_tokenizer, train_bpe, write_ranks
from minirlhf.training import adamw, load_resume, parse_args, restore_training_state, training_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(vocab=1024):
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab_size=vocab, block_size=32))


def test_nothing_non_finite_is_saved(tmp_path):
    path, model = str(tmp_path / "ckpt.pt"), tiny()
    save_checkpoint(path, model, stage="sft", tokenizer_name="lab", step=1)
    good = open(path, "rb").read()
    bad = tiny()
    with torch.no_grad():
        bad.transformer.h[0].mlp.c_fc.weight[3, 4] = float("nan")
    with pytest.raises(FloatingPointError, match="transformer.h.0.mlp.c_fc.weight"):
        save_checkpoint(path, bad, stage="sft", tokenizer_name="lab", step=2)
    opt = adamw(model, 1e-3)
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    opt.state[next(iter(opt.state))]["exp_avg_sq"][0] = float("inf")  # the optimizer state is checked too
    with pytest.raises(FloatingPointError, match="exp_avg_sq"):
        save_checkpoint(path, model, stage="sft", tokenizer_name="lab", step=2, **training_state(opt))
    assert open(path, "rb").read() == good and os.listdir(tmp_path) == ["ckpt.pt"]


def test_sft_with_an_infinite_learning_rate_saves_no_bad_checkpoint(tmp_path):
    write_jsonl(str(tmp_path / "sft.jsonl"), make_data(seed=0, n_sft=64, n_train_per_family=2)["sft"])
    args = train_sft.Args(train_data=str(tmp_path / "sft.jsonl"), out_dir=str(tmp_path / "sft"), lr=float("inf"),
                          init_from="scratch:tiny", block_size=64, batch_size=4, micro_batch_size=4, max_steps=3,
                          ckpt_interval=1, warmup_steps=0)  # not through parse_args, which refuses lr inf
    with pytest.raises(FloatingPointError):
        train_sft.main(args)
    if os.path.exists(tmp_path / "sft" / "ckpt.pt"):  # a checkpoint written before the weights went bad is fine
        ckpt = load_checkpoint(str(tmp_path / "sft" / "ckpt.pt"))
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_loading_a_checkpoint_runs_no_code(tmp_path):
    crafted, witness = tmp_path / "evil.pt", tmp_path / "ran"
    torch.save({"format": "minirlhf", "model_type": "scalar", "payload": Payload(witness)}, crafted)
    with pytest.raises(CheckpointError, match="only tensors and plain values"):
        load_checkpoint(str(crafted))
    assert not witness.exists()


def test_rng_state_round_trips_and_old_numpy_checkpoints_still_load(tmp_path):
    model = tiny()
    opt = adamw(model, 1e-3)
    np.random.seed(3), random.seed(3), torch.manual_seed(3)
    numpy_state = np.random.get_state()
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, model, stage="sft", tokenizer_name="lab", step=5, **training_state(opt))
    expected = np.random.rand(), random.random(), torch.rand(1).item()
    old = load_checkpoint(path)
    old["numpy_rng"] = numpy_state  # the way checkpoints stored it before: a numpy array
    torch.save(old, path)
    np.random.seed(9), random.seed(9), torch.manual_seed(9)
    assert restore_training_state(load_checkpoint(path), opt) == 5
    assert (np.random.rand(), random.random(), torch.rand(1).item()) == expected


def test_checkpoint_carries_a_custom_tokenizer_and_detects_an_impostor(tmp_path):
    ranks = train_bpe(["the cat sat on the mat", "a dog ate a log"] * 3, 280)
    write_ranks(str(tmp_path / "mytok.tiktoken"), ranks)
    tok = get_tokenizer(str(tmp_path / "mytok.tiktoken"))
    save_checkpoint(str(tmp_path / "m.pt"), tiny(tok.vocab_size), stage="sft", tokenizer_name=tok.name)
    os.remove(tmp_path / "mytok.tiktoken")  # a later stage needs no file
    _, loaded, _ = load_model(str(tmp_path / "m.pt"))
    assert loaded.name == tok.name and loaded.encode("the cat") == tok.encode("the cat")

    os.makedirs(tmp_path / "other")
    write_ranks(str(tmp_path / "other" / "lab.tiktoken"), ranks)  # not the lab's vocabulary, under its name
    impostor = get_tokenizer(str(tmp_path / "other" / "lab.tiktoken"))
    assert impostor.name != "lab"
    ckpt = load_checkpoint(str(tmp_path / "m.pt"))
    ckpt.update(tokenizer="lab", tokenizer_sha256=tok.sha256)  # says 'lab', trained on another vocabulary
    ckpt.pop("tokenizer_ranks")
    torch.save(ckpt, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="'lab' vocabulary of sha256"):
        load_model(str(tmp_path / "m.pt"))


def test_a_finished_run_is_not_overwritten_and_a_resumed_log_has_no_step_twice(tmp_path, capsys):
    out = tmp_path / "run"
    save_checkpoint(str(out / "ckpt.pt"), tiny(), stage="sft", tokenizer_name="lab", step=3)
    lines = [json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4, 5)] + ['{"step": 6, "tr']  # killed mid-line
    (out / "log.jsonl").write_text("".join(lines))
    with pytest.raises(SystemExit):
        parse_args(train_sft.Args, ["--out_dir", str(out)])
    assert "--overwrite" in capsys.readouterr().err and len(os.listdir(out)) == 2
    assert parse_args(train_sft.Args, ["--out_dir", str(out), "--overwrite", "true"]).overwrite
    load_resume(str(out))  # resuming from step 3: steps 4 and 5 will be logged again
    assert (out / "log.jsonl").read_text() == "".join(lines[:3])


def test_bad_input_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: not UTF-8"):
        read_jsonl(str(path), ("prompt",))
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b')
    with pytest.raises(DataError, match=r"p.jsonl:3: not valid JSON \(Unterminated string starting at column"):
        read_jsonl(str(path), ("prompt",))
    path.write_text('{"prompt": "a", "chosen": "x", "rejected": "y"}\n{"prompt": "", "chosen": "x", "rejected": "y"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: field 'prompt' is empty"):
        read_jsonl(str(path), ("prompt", "chosen", "rejected"))


def test_a_full_disk_or_a_kill_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = str(tmp_path / "data.jsonl")
    write_jsonl(path, [{"prompt": "old"}])
    (tmp_path / "data.jsonl.tmp999999999").write_text("left by a killed writer")  # no such process

    def rows_then_full_disk():
        yield {"prompt": "new"}
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError, match="data.jsonl: no space left on device; nothing was written"):
        write_jsonl(path, rows_then_full_disk())
    assert os.listdir(tmp_path) == ["data.jsonl"] and read_jsonl(path, ("prompt",)) == [{"prompt": "old"}]

    def torch_save_on_a_full_disk(obj, f):  # torch.save's own wording for a full disk
        f.write(b"PK half a zip")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    monkeypatch.setattr(torch, "save", torch_save_on_a_full_disk)
    with pytest.raises(OSError, match="ckpt.pt: no space left on device"):
        save_checkpoint(str(tmp_path / "ckpt.pt"), tiny(), stage="sft", tokenizer_name="lab")
    assert os.listdir(tmp_path) == ["data.jsonl"]


def test_labelling_resumes_from_a_torn_file_as_if_never_stopped(tmp_path):
    rows = [{"prompt": r["prompt"], "response": resp, "group": i}
            for i, r in enumerate(make_data(seed=0, n_sft=60, n_train_per_family=2)["sft"][:40])
            for resp in (r["response"], " I am not sure.", " 42")]
    pairs = make_pairs(rows)
    whole, part = str(tmp_path / "whole.jsonl"), str(tmp_path / "part.jsonl")
    label_pairs(pairs, SimulatedAnnotator(temperature=1.0, flip_rate=0.2, seed=1), whole)
    lines = open(whole).read().splitlines(keepends=True)
    with open(part, "w") as f:  # killed after 30 labels, in the middle of writing the 31st
        f.write("".join(lines[:30]) + lines[30][:25])
    counts = label_pairs(pairs, SimulatedAnnotator(temperature=1.0, flip_rate=0.2, seed=1), part)
    assert counts["already"] == 30 and open(part).read() == open(whole).read()


def test_a_killed_data_stage_reruns(tmp_path):
    data, state = tmp_path / "data", tmp_path / "out"
    stage = Stage("lab data", [sys.executable, "-m", "minirlhf.lab.make_data", "--out_dir", str(data),
                               "--n_sft", "60", "--n_train_prompts", "2", "--n_eval_prompts", "1"])
    _write_marker(stage, str(state), "started")  # killed after the first of its files
    write_jsonl(str(data / "sft.jsonl"), [{"prompt": "p", "response": "r"}])
    run_stages([stage], str(state), cwd=ROOT)
    assert sorted(os.listdir(data)) == ["prompts_eval.jsonl", "prompts_train.jsonl", "sft.jsonl", "sft_eval.jsonl"]
    assert len(read_jsonl(str(data / "sft.jsonl"), ("prompt", "response"))) > 1
    assert run_stages([stage], str(state), cwd=ROOT) == {}  # done now: skipped
