"""Data preparation scripts: data/hh_rlhf/prepare.py and data/tldr/prepare.py, offline.

The fixtures under tests/fixtures/ are small hand-written files in the exact upstream record formats (HH-RLHF
{"chosen", "rejected"} dialogues; OpenAI's TL;DR comparisons {"info", "summaries", "choice", ...}), with odd
records among them. We check the expected strings of a few records (written out by hand from the fixture text),
which records are skipped and why, and each script's main() end to end into a temporary folder.

    python -m pytest tests/test_prepare_data.py -q
"""

import gzip
import importlib.util
import json
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"prepare_{name}", os.path.join(ROOT, "data", name, "prepare.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hh = load_script("hh_rlhf")
tldr = load_script("tldr")


def fixture_records(path):
    with open(os.path.join(FIXTURES, path)) as f:
        return [json.loads(line) for line in f]


def read_rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def skip_reason(parse, rec):
    with pytest.raises(Exception) as e:
        parse(rec)
    assert e.type.__name__ == "Skip"
    return str(e.value)


# ----------------------------------------------------------------------------- HH-RLHF


def test_hh_two_turn_pair_cut_at_the_last_assistant_marker():
    rec = fixture_records("hh_rlhf/train.jsonl")[1]  # the two replies both start " How about"
    prompt, chosen, rejected = hh.parse_hh_pair(rec)
    assert prompt == ("\n\nHuman: What's a good name for a cat?\n\nAssistant: How about Whiskers?"
                      "\n\nHuman: Something more unusual?\n\nAssistant:")
    assert chosen == " How about Pickle, or Nebula?"
    assert rejected == " How about Cat?"
    assert hh.parse_hh_sft(rec) == (prompt, chosen)


def test_hh_early_divergence_is_no_pair_but_still_an_sft_example():
    recs = fixture_records("hh_rlhf/train.jsonl")
    assert skip_reason(hh.parse_hh_pair, recs[6]) == "diverges before the last turn"  # differ at the first reply
    assert skip_reason(hh.parse_hh_pair, recs[7]) == "diverges before the last turn"  # rejected has an extra turn
    assert hh.parse_hh_sft(recs[6]) == (
        "\n\nHuman: How do I make tea?\n\nAssistant: Boil water and steep a tea bag for three minutes."
        "\n\nHuman: Milk?\n\nAssistant:",
        " If you like, add it after steeping.")
    assert hh.parse_hh_sft(recs[7]) == ("\n\nHuman: Name a prime number.\n\nAssistant:", " Seven.")


def test_hh_odd_records_and_their_reasons():
    recs = fixture_records("hh_rlhf/train.jsonl")
    assert skip_reason(hh.parse_hh_pair, recs[2]) == "identical chosen and rejected"
    assert hh.parse_hh_sft(recs[2])[1] == " Why did the scarecrow win an award? He was outstanding in his field."
    assert skip_reason(hh.parse_hh_pair, recs[3]) == "empty response"
    assert skip_reason(hh.parse_hh_sft, recs[3]) == "empty response"
    assert skip_reason(hh.parse_hh_pair, recs[4]) == "no shared prompt"
    assert skip_reason(hh.parse_hh_pair, recs[5]) == "no shared prompt"
    assert skip_reason(hh.parse_hh_sft, recs[5]) == "no Assistant turn"
    assert skip_reason(hh.parse_hh_sft, {"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c", "rejected": ""}) \
        == "ends with a Human turn"
    assert skip_reason(hh.parse_hh_pair, {"chosen": "\n\nHuman: a"}) == "malformed record"


def test_hh_convert_counts():
    sft, prefs, prompts, skipped = hh.convert(fixture_records("hh_rlhf/train.jsonl"))
    assert (len(sft), len(prefs), len(prompts)) == (7, 3, 6)  # records 1 and 9 share their prompt
    assert dict(skipped) == {
        "sft: empty response": 1, "sft: no Assistant turn": 1,
        "prefs: identical chosen and rejected": 1, "prefs: empty response": 1,
        "prefs: no shared prompt": 2, "prefs: diverges before the last turn": 2,
    }


def test_hh_main_end_to_end(tmp_path):
    out = tmp_path / "out"
    stats = hh.main(["--source", os.path.join(FIXTURES, "hh_rlhf"), "--out_dir", str(out)])
    assert stats["train"]["sft"] == 7 and stats["train"]["prefs"] == 3
    assert stats["test"] == dict(records=3, sft=3, prefs=2, prompts=3, skipped={"prefs: empty response": 1})
    check_outputs(out, {"sft_train": 7, "prefs_train": 3, "prompts_train": 6, "sft_test": 3, "prefs_test": 2})
    assert read_rows(out / "prefs_test.jsonl")[0] == {
        "prompt": "\n\nHuman: What is 2 + 3?\n\nAssistant:", "chosen": " 2 + 3 = 5.", "rejected": " It is 6."}

    # Upstream layout (subset folder of .jsonl.gz files) gives the same files; --max_examples caps each split.
    for name in ("train", "test"):
        os.makedirs(tmp_path / "up" / "helpful-base", exist_ok=True)
        with open(os.path.join(FIXTURES, "hh_rlhf", f"{name}.jsonl"), "rb") as f, \
                gzip.open(tmp_path / "up" / "helpful-base" / f"{name}.jsonl.gz", "wb") as g:
            shutil.copyfileobj(f, g)
    assert hh.main(["--source", str(tmp_path / "up"), "--out_dir", str(tmp_path / "gz")]) == stats
    assert hh.main(["--source", str(tmp_path / "up"), "--out_dir", str(tmp_path / "gz"), "--max_examples", "2"]
                   )["train"]["records"] == 2


def check_outputs(out, counts):
    fields = {"sft": {"prompt", "response"}, "prefs": {"prompt", "chosen", "rejected"}, "prompts": {"prompt"}}
    for name, n in counts.items():
        rows = read_rows(out / f"{name}.jsonl")
        assert len(rows) == n, name
        assert all(set(row) == fields[name.split("_")[0]] for row in rows), name


def test_hub_source_without_datasets_library_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail, installed or not
    with pytest.raises(SystemExit, match="pip install datasets"):
        hh.main(["--source", "Anthropic/hh-rlhf", "--out_dir", "unused"])
    with pytest.raises(SystemExit, match="pip install datasets"):
        tldr.main(["--source", "openai/summarize_from_feedback", "--out_dir", "unused"])


# ----------------------------------------------------------------------------- TL;DR


def test_tldr_prompt_and_summaries():
    recs = fixture_records("tldr/comparisons.jsonl")
    prompt, chosen, rejected = tldr.parse_tldr_pair(recs[0])  # choice 1
    assert prompt == ("SUBREDDIT: r/gardening\nTITLE: Why is my basil dying?\nPOST: My basil plant keeps wilting even "
                      "though I water it every day. It sits on a sunny windowsill.\n\nWhat am I doing wrong?\nTL;DR:")
    assert chosen == " basil on sunny windowsill wilts despite daily watering, why?"
    assert rejected == " water basil every day, it keeps wilting. what am i doing wrong?"
    assert tldr.parse_tldr_sft(recs[0]) == (prompt, chosen)
    # a summary without its leading space gets one
    assert tldr.parse_tldr_pair(recs[5])[1:] == (
        " used car's check engine light came on a week after buying", " car broke")


def test_tldr_odd_records_and_their_reasons():
    recs = fixture_records("tldr/comparisons.jsonl")
    assert skip_reason(tldr.parse_tldr_pair, recs[2]) == "identical summaries"
    assert tldr.parse_tldr_sft(recs[2])[1] == " new job pays more but friends are here. should I move?"
    assert skip_reason(tldr.parse_tldr_pair, recs[3]) == "empty summary"  # the rejected one
    assert tldr.parse_tldr_sft(recs[3])[1] == " left knee hurts on the outside after 5k runs, what could it be?"
    assert skip_reason(tldr.parse_tldr_sft, recs[4]) == "empty summary"  # the preferred one
    assert skip_reason(tldr.parse_tldr_pair, recs[6]) == "no Reddit post"  # CNN/DM
    assert skip_reason(tldr.parse_tldr_pair, dict(recs[0], choice=2)) == "choice is not 0 or 1"
    assert skip_reason(tldr.parse_tldr_pair, dict(recs[0], summaries=recs[0]["summaries"][:1])) == "not two summaries"


def test_tldr_main_end_to_end(tmp_path):
    stats = tldr.main(["--source", os.path.join(FIXTURES, "tldr", "comparisons.jsonl"), "--out_dir", str(tmp_path)])
    assert stats["train"] == dict(records=6, sft=5, prefs=3, prompts=4, skipped={
        "sft: empty summary": 1, "prefs: identical summaries": 1, "prefs: empty summary": 2})
    assert stats["test"] == dict(records=3, sft=2, prefs=2, prompts=2, skipped={
        "sft: no Reddit post": 1, "prefs: no Reddit post": 1})  # valid1 and valid2 records
    check_outputs(tmp_path, {"sft_train": 5, "prefs_train": 3, "prompts_train": 4, "sft_test": 2, "prefs_test": 2})
    assert read_rows(tmp_path / "sft_test.jsonl")[1] == {
        "prompt": "SUBREDDIT: r/cats\nTITLE: Cat wakes me up\n"
                  "POST: My cat knocks everything off my desk at 4am.\nTL;DR:",
        "response": " cat knocks things off desk at 4am, how do I stop it?"}
