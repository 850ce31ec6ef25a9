"""Checkpoints (atomic, typed, clear errors) and the JSONL data formats (errors name file, line and field).

    python -m pytest tests/test_checkpoint_data.py -q
"""

import json
import os

import pytest
import torch

from minirlhf.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from minirlhf.data import DataError, encode_example, left_pad, read_jsonl, write_jsonl
from minirlhf.model import GPT, GPTConfig, ScalarGPT
from minirlhf.tokenizer import get_tokenizer


def test_checkpoint_round_trip_and_kinds(tmp_path):
    gpt = GPT(GPTConfig.preset("tiny", vocab_size=50258))
    path = str(tmp_path / "sft.pt")
    save_checkpoint(path, gpt, stage="sft", tokenizer_name="gpt2", step=7, note="hi")
    assert os.listdir(tmp_path) == ["sft.pt"]  # no temporary file left behind
    model, tok, ckpt = load_model(path, expect="gpt")
    assert ckpt["stage"] == "sft" and ckpt["step"] == 7 and ckpt["note"] == "hi" and tok.name == "gpt2"
    assert not model.training
    idx = torch.randint(0, 50257, (2, 5))
    assert torch.equal(model(idx), gpt.eval()(idx))

    rm_path = str(tmp_path / "rm.pt")
    save_checkpoint(rm_path, ScalarGPT.from_gpt(gpt), stage="rm", tokenizer_name="gpt2")
    rm, _, _ = load_model(rm_path, expect="scalar")
    assert isinstance(rm, ScalarGPT)
    with pytest.raises(CheckpointError, match="'scalar' checkpoint written by stage 'rm'.*language model"):
        load_model(rm_path, expect="gpt")
    with pytest.raises(CheckpointError, match="reward or value model"):
        load_checkpoint(path, expect="scalar")


def test_corrupted_and_foreign_checkpoints(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(str(good), GPT(GPTConfig.preset("tiny", vocab_size=64)), stage="sft", tokenizer_name="gpt2")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:1000])  # a copy interrupted half way
    with pytest.raises(CheckpointError, match="cut.pt: not a readable checkpoint"):
        load_checkpoint(str(cut))
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a minirlhf checkpoint"):
        load_checkpoint(str(foreign))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "missing.pt"))


def test_jsonl_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "prefs.jsonl"
    good = {"prompt": "p", "chosen": "a", "rejected": "b", "extra": 1}
    fields = ("prompt", "chosen", "rejected")
    cases = [(json.dumps({"prompt": "p", "chosen": "a"}), "field 'rejected' is missing"),
             ("{broken", "not valid JSON"),
             (json.dumps({"prompt": 3, "chosen": "a", "rejected": "b"}), "field 'prompt' must be a string"),
             ("[1, 2]", "expected a JSON object")]
    for bad, message in cases:  # a good record, a blank line (skipped, still counted), then the bad one
        path.write_text(f"{json.dumps(good)}\n\n{bad}\n")
        with pytest.raises(DataError) as e:
            read_jsonl(str(path), fields)
        assert str(e.value).startswith(f"{path}:3: ") and message in str(e.value), str(e.value)
    write_jsonl(str(path), [good, good])
    assert read_jsonl(str(path), fields) == [good, good]  # extra fields are kept


def test_encoding_truncates_prompts_from_the_left():
    tok = get_tokenizer("gpt2")
    prompt, response = "one two three four five six seven eight nine ten", " eleven"
    p, r, truncated = encode_example(tok, prompt, response, block_size=6)
    assert r == tok.encode(response) + [tok.eot_token] and len(p) + len(r) == 6 and truncated
    assert p == tok.encode(prompt)[-len(p):]  # the end of the prompt is kept
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
