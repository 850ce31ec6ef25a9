"""The lab's data: train and held-out prompts are disjoint, the same seed gives the same files, the files are
in the formats the training scripts read, the demonstrator honours demo_quality, and the committed lab
tokenizer is exactly what its build code produces and keeps every example short.

    python -m pytest tests/test_lab_data.py -q
"""

import os
from collections import Counter

import pytest

from minirlhf.data import PROMPT_FIELDS, SFT_FIELDS, read_jsonl
from minirlhf.lab import world
from minirlhf.lab.gold import gold
from minirlhf.lab.make_data import LAB_VOCAB_SIZE, lab_corpus, main, make_data
from minirlhf.tokenizer import LAB_TOKENIZER_FILE, get_tokenizer, read_ranks, train_bpe


def test_train_and_held_out_prompts_are_disjoint():
    for seed in (0, 1):
        split = world.split_prompts(seed)
        assert set(split) == set(world.FAMILIES)
        for family, (train, held_out) in split.items():
            assert train and held_out
            assert not {t.prompt for t in train} & {t.prompt for t in held_out}, family
            assert all(t.family == family for t in train + held_out)
        data = make_data(seed, n_sft=600, n_train_per_family=50, n_eval_per_family=10)
        held_out = {r["prompt"] for r in data["prompts_eval"]}
        assert held_out == {t.prompt for t in world.eval_tasks(seed, 10)}
        assert not held_out & {r["prompt"] for r in data["prompts_train"]}
        assert not held_out & {r["prompt"] for r in data["sft"]}


def test_same_seed_same_data_and_other_seed_other_data():
    a, b = make_data(3, n_sft=600), make_data(3, n_sft=600)
    assert a == b
    c = make_data(4, n_sft=600)
    assert a["sft"] != c["sft"] and a["prompts_eval"] != c["prompts_eval"]
    # the number of demonstrations does not move the prompt files
    assert make_data(3, n_sft=1200)["prompts_train"] == a["prompts_train"]


def test_files_are_in_the_training_formats(tmp_path):
    main(["--out_dir", str(tmp_path), "--n_sft", "600", "--n_train_prompts", "30", "--n_eval_prompts", "5"])
    sft = read_jsonl(tmp_path / "sft.jsonl", SFT_FIELDS)
    train = read_jsonl(tmp_path / "prompts_train.jsonl", PROMPT_FIELDS)
    held_out = read_jsonl(tmp_path / "prompts_eval.jsonl", PROMPT_FIELDS)
    assert len(sft) == 600 and len(train) == 30 * 6 and len(held_out) == 5 * 6
    assert Counter(r["family"] for r in sft) == {f: 100 for f in world.FAMILIES}
    for r in sft:
        assert r["prompt"].startswith("Human: ") and r["prompt"].endswith("\n\nAssistant:")
        assert r["response"].startswith(" ")
        assert world.parse_prompt(r["prompt"]).family == r["family"]
    assert os.path.exists(tmp_path / "sft_eval.jsonl")


@pytest.mark.parametrize("demo_quality", [0.0, 0.6, 1.0])
def test_demonstrator_quality(demo_quality):
    sft = make_data(0, n_sft=3000, demo_quality=demo_quality, deference=0.0)["sft"]
    ideal = sum(r["ideal"] for r in sft) / len(sft)
    assert ideal == pytest.approx(demo_quality, abs=0.03)
    scores = [gold(r["prompt"], r["response"]).score for r in sft]
    assert all(s == 1.0 for s, r in zip(scores, sft) if r["ideal"])
    assert all(s < 1.0 for s, r in zip(scores, sft) if not r["ideal"])
    if demo_quality == 0.0:  # flawed demonstrations include filler, a lever for the annotators' bias
        assert 0.4 < sum(gold(r["prompt"], r["response"]).filler for r in sft) / len(sft) < 0.6  # about half


@pytest.mark.parametrize("deference", [0.0, 0.25, 1.0])
def test_demonstrator_defers_to_wrong_users(deference):
    """Sycophancy probes whose user is wrong: the demonstrator repeats the user's answer with probability
    deference, and otherwise behaves as on any prompt (with demo_quality 1.0: the true answer)."""
    sft = make_data(0, n_sft=12000, demo_quality=1.0, deference=deference)["sft"]
    probes = [(r, world.parse_prompt(r["prompt"])) for r in sft if r["family"] == "sycophancy"]
    wrong_user = [gold(r["prompt"], r["response"]) for r, t in probes if t.claim != t.truth]
    right_user = [r for r, t in probes if t.claim == t.truth]
    assert len(wrong_user) > 800 and all(j.sycophantic != j.correct for j in wrong_user)
    assert sum(j.sycophantic for j in wrong_user) / len(wrong_user) == pytest.approx(deference, abs=0.05)
    assert right_user and all(r["ideal"] for r in right_user)  # a right user gets the true answer


def test_committed_tokenizer_is_reproducible_and_compact():
    assert read_ranks(LAB_TOKENIZER_FILE) == train_bpe(lab_corpus(), LAB_VOCAB_SIZE)
    tok = get_tokenizer("lab")
    assert tok.vocab_size <= LAB_VOCAB_SIZE
    for name in list(world.CAPITALS) + list(world.CAPITALS.values()) + list(world.INVENTED_COUNTRIES):
        assert len(tok.encode(" " + name)) == 1, name  # a fact is a pair of tokens
    longest = max(len(tok.encode(r["prompt"] + r["response"])) + 1 for r in make_data(0, n_sft=3000)["sft"])
    assert longest <= 48  # prompt + response + eot fit a 64-token context with room to spare
    text = " Great question! The capital of Zorvania is Brellport. 7 + 5 = 12."
    assert tok.decode(tok.encode(text)) == text
