"""OpenAI's TL;DR summary comparisons -> our three JSONL formats (SFT, preference pairs, prompts), train and test.

    python data/tldr/prepare.py                                  # openai/summarize_from_feedback from the Hub
    python data/tldr/prepare.py --source trl-internal-testing/tldr-preference-trl-style   # fallback Hub copy
    python data/tldr/prepare.py --source ~/comparisons           # offline: upstream batch*.json files

Source: the human comparisons of "Learning to summarize from human feedback" (Stiennon et al. 2020), as OpenAI
released them (https://openaipublic.blob.core.windows.net/summarize-from-feedback/dataset/comparisons/batch*.json,
one JSON object per line) and as the Hub holds them. openai/summarize_from_feedback is a loading script, which
`datasets` >= 4 no longer runs, so we read its Parquet export (branch refs/convert/parquet, folder comparisons).
trl-internal-testing/tldr-preference-trl-style is a plain Parquet copy that keeps the same upstream columns.
Upstream record (abridged):

    {"info": {"id": "t3_2vwp1w", "post": "I had a car accident on friday, ...", "title": "Anybody with ...",
              "subreddit": "legaladvice"},
     "summaries": [{"text": " car accident caused me ...", "policy": "sup4_ppo_rm3_kl10", "note": "..."},
                   {"text": " we suspect other party ...", "policy": "ref", "note": "..."}],
     "choice": 1, "worker": "ikNm...", "batch": "batch9", "split": "train", "extra": {"confidence": 8}}

We write
    prompt   = "SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:"   (title and post stripped)
    chosen   = summaries[choice]["text"], rejected = summaries[1 - choice]["text"]
Summaries begin with a space, as upstream has them (one is added where missing), so the model sees
encode(prompt) + encode(summary) + [eot]. SFT rows are (prompt, preferred summary); note that the preferred
summary is sometimes written by a policy, not a person (its "policy" is then not "ref"). Prompts rows are the
distinct prompts (many comparisons share a post).

Odd records, each skipped with a counted reason (pure functions below; tests/test_prepare_data.py checks them):
  - no Reddit post (the CNN/DM comparisons carry info.article instead): skipped.
  - fewer than two summaries, or a choice other than 0 or 1: skipped.
  - an empty summary: skipped as a pair; skipped for SFT only if it is the preferred one.
  - two identical summaries: no preference, skipped as a pair; still an SFT example.

Splits are upstream's: each record's "split" field, "train" -> train, "valid1" / "valid2" -> test.
"""

import argparse
import gzip
import json
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # repo root
from minirlhf.data import write_jsonl  # noqa: E402

# Hub names that need more than load_dataset(name): the original repository is a loading script.
HUB_OPTIONS = {"openai/summarize_from_feedback": dict(revision="refs/convert/parquet", data_dir="comparisons")}


class Skip(Exception):
    """A record that cannot be converted; str(skip) is the reason counted in the summary."""


# ----------------------------------------------------------------------------- parsing (pure functions)


def format_prompt(info):
    """The standard TL;DR prompt for one Reddit post (info: the upstream "info" dict)."""
    if not isinstance(info, dict):
        raise Skip("malformed record")
    if not isinstance(info.get("post"), str) or not info["post"].strip():
        raise Skip("no Reddit post")
    if not isinstance(info.get("subreddit"), str) or not isinstance(info.get("title"), str):
        raise Skip("malformed record")
    return f"SUBREDDIT: r/{info['subreddit']}\nTITLE: {info['title'].strip()}\nPOST: {info['post'].strip()}\nTL;DR:"


def _summary(text):
    if not isinstance(text, str) or not text.strip():
        raise Skip("empty summary")
    return text if text[0].isspace() else " " + text


def _parse(rec):
    """Upstream record -> (prompt, preferred summary text, other summary text), texts not yet checked."""
    if not isinstance(rec, dict):
        raise Skip("malformed record")
    prompt = format_prompt(rec.get("info"))
    summaries = rec.get("summaries")
    if not isinstance(summaries, list) or len(summaries) < 2 or not all(isinstance(s, dict) for s in summaries):
        raise Skip("not two summaries")
    choice = rec.get("choice")
    if isinstance(choice, bool) or choice not in (0, 1):
        raise Skip("choice is not 0 or 1")
    return prompt, summaries[choice].get("text"), summaries[1 - choice].get("text")


def parse_tldr_sft(rec):
    """Upstream record -> (prompt, preferred summary), or raise Skip(reason)."""
    prompt, preferred, _ = _parse(rec)
    return prompt, _summary(preferred)


def parse_tldr_pair(rec):
    """Upstream record -> (prompt, chosen summary, rejected summary), or raise Skip(reason)."""
    prompt, chosen, rejected = _parse(rec)
    chosen, rejected = _summary(chosen), _summary(rejected)
    if chosen.strip() == rejected.strip():
        raise Skip("identical summaries")
    return prompt, chosen, rejected


def convert(records):
    """Records -> (sft rows, preference rows, prompt rows, Counter of skip reasons keyed 'sft: ...'/'prefs: ...')."""
    sft, prefs, skipped = [], [], Counter()
    for rec in records:
        try:
            prompt, response = parse_tldr_sft(rec)
            sft.append({"prompt": prompt, "response": response})
        except Skip as reason:
            skipped[f"sft: {reason}"] += 1
        try:
            prompt, chosen, rejected = parse_tldr_pair(rec)
            prefs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        except Skip as reason:
            skipped[f"prefs: {reason}"] += 1
    prompts = [{"prompt": p} for p in dict.fromkeys(row["prompt"] for row in sft)]  # distinct, in order
    return sft, prefs, prompts, skipped


# ----------------------------------------------------------------------------- reading the source


def split_records(records):
    """Upstream split field -> ours: {"train": [...], "test": [...]} ("valid1", "valid2" -> test)."""
    splits = {"train": [], "test": []}
    for rec in records:
        splits["train" if isinstance(rec, dict) and rec.get("split", "train") == "train" else "test"].append(rec)
    return splits


def read_local(path):
    """A file or a folder of upstream batch*.json / .jsonl (.gz) files, one record a line -> {split: [records]}."""
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
                       if f.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")))
    else:
        files = [path]
    records = []
    for file in files:
        with (gzip.open if file.endswith(".gz") else open)(file, "rt", encoding="utf-8") as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return split_records(records)


def read_hub(name):
    """Download with the `datasets` library -> {split: [records]}."""
    try:
        import datasets
    except ImportError:
        sys.exit(f"the `datasets` library is needed to download {name} (pip install datasets), "
                 "or pass --source a local file or folder in upstream format")
    try:
        dd = datasets.load_dataset(name, **HUB_OPTIONS.get(name, {}))
    except Exception as e:  # offline, or the name is wrong
        sys.exit(f"could not load {name} from the Hugging Face Hub: {e}\n"
                 "offline? download the comparisons/batch*.json files elsewhere and pass --source PATH")
    return split_records([rec for ds in dd.values() for rec in ds])


# ----------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", default="openai/summarize_from_feedback",
                   help="Hub dataset name, or a local upstream file/folder")
    p.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--max_examples", type=int, default=0, help="upstream records per split to read (0: all)")
    args = p.parse_args(argv)

    if os.path.exists(args.source):
        splits = read_local(args.source)
    else:
        splits = read_hub(args.source)
    stats = {}
    for split in ("train", "test"):
        records = splits.get(split, [])
        if args.max_examples:
            records = records[: args.max_examples]
        sft, prefs, prompts, skipped = convert(records)
        write_jsonl(os.path.join(args.out_dir, f"sft_{split}.jsonl"), sft)
        write_jsonl(os.path.join(args.out_dir, f"prefs_{split}.jsonl"), prefs)
        write_jsonl(os.path.join(args.out_dir, f"prompts_{split}.jsonl"), prompts)
        stats[split] = dict(records=len(records), sft=len(sft), prefs=len(prefs), prompts=len(prompts),
                            skipped=dict(skipped))
        print(f"{split}: {len(records)} records -> {len(sft)} sft | {len(prefs)} prefs | {len(prompts)} prompts")
        for reason, count in sorted(skipped.items()):
            print(f"  skipped {count:>6}  {reason}")
    print(f"wrote {args.out_dir}/{{sft,prefs,prompts}}_{{train,test}}.jsonl")
    return stats


if __name__ == "__main__":
    main()
