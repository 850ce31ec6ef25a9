"""sample.py, the way to see what a checkpoint says: with tiny random-weight checkpoints written here, two
checkpoints answer the same prompts side by side; greedy answers equal a plain argmax loop that recomputes the
whole prefix; the reward-model score equals the reward model read on the full sequence; the gold score is the
gold judge's; prompts come from --prompt, a JSONL file, a plain-text file, or the interactive loop; bad input
is a clear error.

    python -m pytest tests/test_sample.py -q
"""

import io
import json

import pytest
import torch

import sample
from minirlhf.checkpoint import save_checkpoint
from minirlhf.lab.gold import gold
from minirlhf.model import GPT, GPTConfig, ScalarGPT
from minirlhf.tokenizer import get_tokenizer

TOK = get_tokenizer("lab")
QUESTION = "What is 2 + 3?"
PROMPT = f"Human: {QUESTION}\n\nAssistant:"  # the lab's chat format


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("sample")
    paths = {}
    for seed, name in ((0, "sft"), (1, "ppo")):
        torch.manual_seed(seed)
        model = GPT(GPTConfig.preset("tiny", vocab_size=TOK.vocab_size))
        paths[name] = str(d / name / "ckpt.pt")
        save_checkpoint(paths[name], model, stage=name, tokenizer_name="lab")
    torch.manual_seed(2)
    rm = ScalarGPT(GPTConfig.preset("tiny", vocab_size=TOK.vocab_size))
    paths["rm"] = str(d / "rm" / "ckpt.pt")
    save_checkpoint(paths["rm"], rm, stage="rm", tokenizer_name="lab")
    return paths


def greedy_by_recomputation(model, ids, max_new):
    """Plain greedy decoding: the whole prefix through the model for every token, stop at end-of-text."""
    out = []
    for _ in range(max_new):
        logits = model(torch.tensor([ids + out]))[0, -1].clone()
        logits[TOK.pad_token] = float("-inf")
        out.append(int(logits.argmax()))
        if out[-1] == TOK.eot_token:
            break
    return out


def test_two_checkpoints_greedy_with_scores(ckpts, capsys):
    from minirlhf.checkpoint import load_model
    rows = sample.main(["--ckpt", f"SFT={ckpts['sft']}", "--ckpt", f"PPO={ckpts['ppo']}", "--rm", ckpts["rm"],
                        "--prompt", QUESTION, "--prompt", "Tell me a joke.", "--greedy", "--max_new_tokens", "6"])
    printed = capsys.readouterr().out
    assert printed.count("[SFT]") == 2 and printed.count("[PPO]") == 2 and repr(PROMPT) in printed
    rm = load_model(ckpts["rm"], expect="scalar")[0]
    assert len(rows) == 4
    for row in rows:
        model = load_model(ckpts[row["model"].lower()], expect="gpt")[0]
        with torch.no_grad():
            ids = greedy_by_recomputation(model, TOK.encode(row["prompt"]), 6)
            assert row["ended"] == (ids[-1] == TOK.eot_token)
            assert row["response"] == TOK.decode(ids[:-1] if row["ended"] else ids)
            want_rm = rm(torch.tensor([TOK.encode(row["prompt"]) + ids]))[0, -1].item()
        assert row["rm"] == pytest.approx(want_rm, abs=1e-5)
        assert f"rm {want_rm:+.2f}" in printed
        if row["prompt"] == PROMPT:  # a lab prompt: the gold judge's score too
            assert row["gold"] == gold(PROMPT, row["response"], row["ended"]).score
        else:  # "Tell me a joke." is no lab prompt: no gold score
            assert row["gold"] is None


def test_prompt_files_sampling_options_and_interactive_loop(ckpts, tmp_path, capsys, monkeypatch):
    jsonl, plain = tmp_path / "p.jsonl", tmp_path / "p.txt"
    jsonl.write_text(json.dumps({"prompt": PROMPT, "family": "arithmetic"}) + "\n\n")
    plain.write_text("What is the capital of France?\nHow do I pick a lock?\n")
    assert sample.read_prompts(str(jsonl)) == [PROMPT]
    assert sample.read_prompts(str(plain)) == ["What is the capital of France?", "How do I pick a lock?"]
    sample.main(["--ckpt", ckpts["ppo"], "--prompts", str(plain), "--n", "2", "--top_k", "5", "--top_p", "0.9",
                 "--temperature", "1.0", "--max_new_tokens", "4", "--seed", "3"])
    first = capsys.readouterr().out
    assert first.count("[ppo]") == 4 and "gold" in first  # 2 prompts x 2 samples; lab questions get gold
    sample.main(["--ckpt", ckpts["ppo"], "--prompts", str(plain), "--n", "2", "--top_k", "5", "--top_p", "0.9",
                 "--temperature", "1.0", "--max_new_tokens", "4", "--seed", "3"])
    assert capsys.readouterr().out == first  # seeded
    assert sample.chat_prompt("Hi", "gpt2") == "\n\nHuman: Hi\n\nAssistant:" and sample.chat_prompt(PROMPT, "lab") == PROMPT

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr("sys.stdin", Terminal(QUESTION + "\n\n"))
    sample.main(["--ckpt", ckpts["sft"], "--max_new_tokens", "4"])
    out = capsys.readouterr().out
    assert "type a question" in out and out.count("[sft]") == 1 and repr(PROMPT) in out


def test_bad_input_is_a_clear_error(ckpts, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    with pytest.raises(SystemExit):
        sample.main(["--ckpt", ckpts["sft"]])
    assert "stdin is not a terminal" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n{"question": "y"}\n')
    with pytest.raises(SystemExit, match=r"bad.jsonl:2: .*'prompt'"):
        sample.main(["--ckpt", ckpts["sft"], "--prompts", str(bad)])
    with pytest.raises(SystemExit):
        sample.main(["--ckpt", ckpts["sft"], "--prompt", "x", "--top_p", "1.5"])
    assert "--top_p 1.5" in capsys.readouterr().err
