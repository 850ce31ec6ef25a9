"""Anthropic HH-RLHF -> our three JSONL formats (SFT, preference pairs, prompts), train and test.

    python data/hh_rlhf/prepare.py                                   # Anthropic/hh-rlhf from the Hub, all four subsets
    python data/hh_rlhf/prepare.py --data_dir helpful-base           # one subset (43,835 train / 2,354 test pairs)
    python data/hh_rlhf/prepare.py --source ~/hh-rlhf/helpful-base   # offline: upstream files already downloaded

Upstream record (one JSON object per line of helpful-base/train.jsonl.gz, harmless-base/test.jsonl.gz, ...):

    {"chosen":   "\\n\\nHuman: How do I boil an egg?\\n\\nAssistant: Put it in boiling water for 8 minutes.",
     "rejected": "\\n\\nHuman: How do I boil an egg?\\n\\nAssistant: I don't know."}

Each side is a whole dialogue; the two share the conversation and differ in the last Assistant turn. We cut
    prompt   = the longest common prefix of chosen and rejected, cut back to the end of its last "\\n\\nAssistant:"
    chosen   = what follows the prompt in chosen     (" Put it in boiling water for 8 minutes.")
    rejected = what follows the prompt in rejected   (" I don't know.")
so the prompt ends with "Assistant:" and responses begin with a space, exactly as upstream has them, and the
model sees encode(prompt) + encode(response) + [eot].

Odd records, each skipped with a counted reason (pure functions below; tests/test_prepare_data.py checks them):
  - identical chosen and rejected: no preference, skipped as a pair; the chosen dialogue is still a fine SFT example.
  - no shared prefix ending in an Assistant marker: nothing to call the prompt, skipped as a pair.
  - dialogues that diverge before the last turn (an earlier reply, or one side has extra turns): the "responses"
    would hold several turns, and the label was not given to them, so the pair is skipped. The SFT example uses
    the chosen dialogue alone (its last Assistant turn), so it is kept.
  - an empty (or whitespace-only) response: skipped; so is an SFT example whose chosen dialogue ends with a Human turn.
SFT rows are (prompt, chosen response) cut from the chosen dialogue at its last "\\n\\nAssistant:"; prompts rows
are the distinct SFT prompts (the prompts PPO generates from).

Splits are upstream's: records from Hub split "test", or a local file whose name starts with "test", go to test.
"""

import argparse
import gzip
import json
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # repo root
from minirlhf.data import write_jsonl  # noqa: E402

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


class Skip(Exception):
    """A record that cannot be converted; str(skip) is the reason counted in the summary."""


# ----------------------------------------------------------------------------- parsing (pure functions)


def _dialogues(rec):
    if not isinstance(rec, dict) or not isinstance(rec.get("chosen"), str) or not isinstance(rec.get("rejected"), str):
        raise Skip("malformed record")
    return rec["chosen"], rec["rejected"]


def _check_response(response, several_turns_reason):
    if not response.strip():
        raise Skip("empty response")
    if HUMAN in response or ASSISTANT in response:
        raise Skip(several_turns_reason)
    return response


def common_prefix_len(a, b):
    """Length of the longest common prefix, by binary search (string compares run in C; dialogues are long)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def parse_hh_sft(rec):
    """Upstream record -> (prompt, response) from the chosen dialogue, cut at its last Assistant marker."""
    chosen, _ = _dialogues(rec)
    cut = chosen.rfind(ASSISTANT)
    if cut < 0:
        raise Skip("no Assistant turn")
    cut += len(ASSISTANT)
    return chosen[:cut], _check_response(chosen[cut:], "ends with a Human turn")


def parse_hh_pair(rec):
    """Upstream record -> (prompt, chosen response, rejected response), or raise Skip(reason)."""
    chosen, rejected = _dialogues(rec)
    if chosen == rejected:
        raise Skip("identical chosen and rejected")
    # The responses may themselves start alike (" I think so" vs " I think not"): cut back to the marker.
    cut = chosen.rfind(ASSISTANT, 0, common_prefix_len(chosen, rejected))
    if cut < 0:
        raise Skip("no shared prompt")
    cut += len(ASSISTANT)
    diverged = "diverges before the last turn"
    return chosen[:cut], _check_response(chosen[cut:], diverged), _check_response(rejected[cut:], diverged)


def convert(records):
    """Records -> (sft rows, preference rows, prompt rows, Counter of skip reasons keyed 'sft: ...'/'prefs: ...')."""
    sft, prefs, skipped = [], [], Counter()
    for rec in records:
        try:
            prompt, response = parse_hh_sft(rec)
            sft.append({"prompt": prompt, "response": response})
        except Skip as reason:
            skipped[f"sft: {reason}"] += 1
        try:
            prompt, chosen, rejected = parse_hh_pair(rec)
            prefs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        except Skip as reason:
            skipped[f"prefs: {reason}"] += 1
    prompts = [{"prompt": p} for p in dict.fromkeys(row["prompt"] for row in sft)]  # distinct, in order
    return sft, prefs, prompts, skipped


# ----------------------------------------------------------------------------- reading the source


def read_local(path):
    """A file or a folder of upstream .jsonl / .jsonl.gz files -> {split: [records]}; 'test*' files are test."""
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
                       if f.endswith((".jsonl", ".jsonl.gz")))
    else:
        files = [path]
    splits = {"train": [], "test": []}
    for file in files:
        split = "test" if os.path.basename(file).startswith("test") else "train"
        with (gzip.open if file.endswith(".gz") else open)(file, "rt", encoding="utf-8") as f:
            splits[split].extend(json.loads(line) for line in f if line.strip())
    return splits


def read_hub(name, data_dir):
    """Download with the `datasets` library -> {split: [records]}."""
    try:
        import datasets
    except ImportError:
        sys.exit(f"the `datasets` library is needed to download {name} (pip install datasets), "
                 "or pass --source a local file or folder in upstream format")
    try:
        dd = datasets.load_dataset(name, data_dir=data_dir)
    except Exception as e:  # offline, or the name is wrong
        sys.exit(f"could not load {name} from the Hugging Face Hub: {e}\n"
                 "offline? download helpful-base/train.jsonl.gz etc. elsewhere and pass --source PATH")
    return {"test" if split == "test" else "train": list(ds) for split, ds in dd.items()}


# ----------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", default="Anthropic/hh-rlhf", help="Hub dataset name, or a local upstream file/folder")
    p.add_argument("--data_dir", default=None, help="Hub subset folder, e.g. helpful-base (default: all)")
    p.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--max_examples", type=int, default=0, help="upstream records per split to read (0: all)")
    args = p.parse_args(argv)

    if os.path.exists(args.source):
        splits = read_local(args.source)
    else:
        splits = read_hub(args.source, args.data_dir)
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
