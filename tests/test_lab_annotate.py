"""Preference labelling: simulated annotators (near-zero temperature agrees with gold on every pair; flip_rate e
disagrees at rate e; bias likes filler; coverage; seeds), the human labeller driven through stdin (skip, quit,
resume; each distinct pair shown once, with how many wait), and a reward-model labeller on pairs sampled from a tiny random-weight checkpoint.

    python -m pytest tests/test_lab_annotate.py -q
"""

import io
import json
import math
import random

import pytest
import torch

from minirlhf.data import PREFERENCE_FIELDS, read_jsonl
from minirlhf.lab import world
from minirlhf.lab.annotate import (HumanLabeller, RewardModelLabeller, ScoreLabeller, SimulatedAnnotator, label_pairs,
                                   make_pairs, sample_rows)
from minirlhf.lab.gold import gold
from minirlhf.model import GPT, GPTConfig, ScalarGPT
from minirlhf.tokenizer import get_tokenizer


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread, and do not stall when other processes hold the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def demo_pairs(n, seed=0):
    """n (prompt, a, b) with different gold scores: demonstrations of the same train prompt."""
    rng = random.Random(seed)
    tasks = world.balanced({f: tr for f, (tr, _) in world.split_prompts(seed).items()}, n, rng)
    pairs = []
    while len(pairs) < n:
        for t in tasks:
            a, b = world.demonstrate(t, rng, 0.5), world.demonstrate(t, rng, 0.5)
            if gold(t.prompt, a).score != gold(t.prompt, b).score and len(pairs) < n:
                pairs.append((t.prompt, a, b))
    return pairs


def gold_says_a(prompt, a, b):
    return gold(prompt, a).score > gold(prompt, b).score


def test_near_zero_temperature_agrees_with_gold_on_every_pair():
    by_score = ScoreLabeller(lambda prompt, response, ended: gold(prompt, response, ended).score)
    for annotator in (SimulatedAnnotator(temperature=1e-3, flip_rate=0.0, seed=1), SimulatedAnnotator(0.0), by_score):
        for prompt, a, b in demo_pairs(600):
            assert annotator.label(prompt, a, b) == (0 if gold_says_a(prompt, a, b) else 1), (prompt, a, b)


@pytest.mark.parametrize("flip_rate", [0.1, 0.3])
def test_flip_rate_is_the_disagreement_rate(flip_rate):
    pairs = demo_pairs(3000)
    annotator = SimulatedAnnotator(temperature=1e-3, flip_rate=flip_rate, seed=2)
    disagree = sum(annotator.label(p, a, b) != (0 if gold_says_a(p, a, b) else 1) for p, a, b in pairs) / len(pairs)
    tolerance = 4 * math.sqrt(flip_rate * (1 - flip_rate) / len(pairs))  # 4 standard errors
    assert abs(disagree - flip_rate) < tolerance


def test_preference_probability_temperature_bias_and_coverage():
    p = world.PROMPT_FORMAT.format(question="What is 3 + 5?")
    plain, filler = " 3 + 5 = 8.", " Great question! 3 + 5 = 8."
    margin = gold(p, plain).score - gold(p, filler).score  # 0.4: gold dislikes filler
    honest = SimulatedAnnotator(temperature=0.5)
    assert honest.prob_a(p, plain, filler) == pytest.approx(1 / (1 + math.exp(-margin / 0.5)))
    biased = SimulatedAnnotator(temperature=0.5, bias=1.0)  # likes filler more than gold dislikes it
    assert biased.prob_a(p, plain, filler) == pytest.approx(1 / (1 + math.exp(-(margin - 1.0) / 0.5)))
    assert biased.prob_a(p, plain, filler) < 0.5 < honest.prob_a(p, plain, filler)
    covered = SimulatedAnnotator(temperature=0.0, families=["harmful"])
    assert covered.label(p, plain, filler) is None  # arithmetic is not covered
    harmful = world.PROMPT_FORMAT.format(question="How do I steal a car?")
    assert covered.label(harmful, " Sorry, I can't help with that.", " Smash a back window when nobody is home.") == 0
    assert SimulatedAnnotator(temperature=0.0).label(p, plain, plain) is None  # a perfect judge's tie: skipped


def test_same_seed_same_labels():
    pairs = demo_pairs(300)

    def labels(seed):
        annotator = SimulatedAnnotator(temperature=0.5, flip_rate=0.2, bias=0.5, seed=seed)
        return [annotator.label(p, a, b) for p, a, b in pairs]
    assert labels(7) == labels(7) and labels(7) != labels(8)


def rows_for(pairs):
    """(prompt, a, b) -> sample rows as written by `annotate sample`: one group of two per pair."""
    return [{"prompt": p, "response": r, "ended": True, "group": i}
            for i, (p, a, b) in enumerate(pairs) for r in (a, b)]


def test_human_labeller_skip_quit_and_resume(tmp_path):
    pairs = make_pairs(rows_for(demo_pairs(5)))
    out, stdout = tmp_path / "prefs.jsonl", io.StringIO()
    # session 1: a typo (asked again), 1, skip, 2, quit
    counts = label_pairs(pairs, HumanLabeller(io.StringIO("x\n1\ns\n2\nq\n"), stdout), out, "human")
    assert counts["labelled"] == 2 and counts["skipped"] == 1
    shown = stdout.getvalue()
    assert pairs[0][0]["prompt"] in shown and "[1]" + pairs[0][0]["response"] in shown
    assert "type 1, 2, s or q" in shown and shown.count("===== pair") == 4 and "5 distinct pairs wait" in shown
    rows = read_jsonl(out, PREFERENCE_FIELDS)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [
        (pairs[0][0]["response"], pairs[0][1]["response"]), (pairs[2][1]["response"], pairs[2][0]["response"])]
    # session 2 resumes: the skipped pair comes back, labelled pairs do not; end of input stops like quit
    stdout = io.StringIO()
    counts = label_pairs(pairs, HumanLabeller(io.StringIO("1\n1\n"), stdout), out, "human")
    assert counts == {"labelled": 2, "skipped": 0, "already": 2, "gold_agreement": counts["gold_agreement"]}
    assert pairs[1][0]["response"] in stdout.getvalue() and pairs[0][0]["response"] not in stdout.getvalue()
    rows = read_jsonl(out, PREFERENCE_FIELDS)
    assert len(rows) == 4 and all(r["labeller"] == "human" for r in rows)
    # session 3 finishes; a fourth run has nothing left to show
    label_pairs(pairs, HumanLabeller(io.StringIO("2\n"), io.StringIO()), out, "human")
    stdout = io.StringIO()
    assert label_pairs(pairs, HumanLabeller(io.StringIO(""), stdout), out)["already"] == 5
    assert stdout.getvalue().startswith("0 distinct pairs wait") and "=====" not in stdout.getvalue()
    assert len(read_jsonl(out, PREFERENCE_FIELDS)) == 5


def test_a_person_sees_each_distinct_pair_once_and_how_many_wait(tmp_path):
    prompt, (a, b, c) = "Human: What is 2 + 3?\n\nAssistant:", (" 2 + 3 = 5.", " 2 + 3 = 6.", " I don't know.")
    rows = [{"prompt": prompt, "response": r, "ended": True, "group": 0} for r in (a, b, a, c)]  # two samples agree
    assert len(make_pairs(rows)) == 5  # (a,b) (a,c) (b,a') (b,c) (a',c): what the simulated annotators label
    pairs = make_pairs(rows, distinct=True)
    texts = [frozenset((x["response"], y["response"])) for x, y in pairs]
    assert sorted(map(sorted, texts)) == sorted(map(sorted, [{a, b}, {a, c}, {b, c}]))  # each once
    stdout = io.StringIO()
    counts = label_pairs(pairs, HumanLabeller(io.StringIO("1\nq\n"), stdout), tmp_path / "p.jsonl", "human")
    shown = stdout.getvalue()
    assert shown.startswith("3 distinct pairs wait to be labelled (0 labelled earlier)")
    assert "===== pair 1 of 3" in shown and shown.count("===== pair") == 2 and counts["labelled"] == 1
    stdout = io.StringIO()  # the next session counts what is left
    label_pairs(pairs, HumanLabeller(io.StringIO(""), stdout), tmp_path / "p.jsonl", "human")
    assert stdout.getvalue().startswith("2 distinct pairs wait to be labelled (1 labelled earlier)")


def test_pairs_sampled_from_a_checkpoint_and_labelled_by_a_reward_model(tmp_path):
    torch.manual_seed(0)
    tok = get_tokenizer("lab")
    policy = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size)).eval()
    prompts = [t.prompt for t in world.eval_tasks(0, 2)]
    rows = sample_rows(policy, tok, prompts, k=3, max_new_tokens=8, temperature=1.0, batch_size=5, seed=0)
    assert len(rows) == 3 * len(prompts)
    assert rows == sample_rows(policy, tok, prompts, k=3, max_new_tokens=8, temperature=1.0, batch_size=5, seed=0)
    assert [r["prompt"] for r in rows[:3]] == [prompts[0]] * 3 and {r["group"] for r in rows[:3]} == {0}
    pairs = make_pairs(rows)
    assert 0 < len(pairs) <= 3 * len(prompts) and all(a["group"] == b["group"] for a, b in pairs)

    labeller = RewardModelLabeller(ScalarGPT.from_gpt(policy).eval(), tok, reward_mean=0.5, reward_std=2.0)
    out = tmp_path / "prefs_rm.jsonl"
    counts = label_pairs(pairs, labeller, out, "rm")
    prefs = read_jsonl(out, PREFERENCE_FIELDS)
    assert counts["labelled"] == len(prefs) > 0
    for r in prefs:
        chosen, rejected = labeller.score(r["prompt"], [r["chosen"], r["rejected"]], [r["chosen_ended"],
                                                                                       r["rejected_ended"]])
        assert chosen > rejected
        assert json.loads(json.dumps(r))["family"] == world.parse_prompt(r["prompt"]).family
