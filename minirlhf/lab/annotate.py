"""Preference labelling: responses sampled from a checkpoint, paired, and labelled by a pluggable labeller.

As in real RLHF, the pairs are samples from the SFT model (k >= 2 per prompt), not demonstrations. Two steps:

    # 1. sample k responses per prompt (one JSONL row per response, SFT format plus "ended" and "group")
    python -m minirlhf.lab.annotate sample --ckpt out/sft.pt --prompts data/lab/prompts_train.jsonl \\
        --out data/lab/samples.jsonl --k 2 --n_prompts 1000
    # 2. label every pair of different responses to the same prompt -> preferences JSONL
    python -m minirlhf.lab.annotate label --samples data/lab/samples.jsonl --out data/lab/prefs.jsonl \\
        --labeller sim --temperature 0.1 --flip_rate 0.0 --bias 0.0 [--families arithmetic,harmful]
    # the same pairs labelled by you (each distinct pair once; 1 / 2 / s = skip / q = quit; run again to resume),
    # or by a reward model
    python -m minirlhf.lab.annotate label --samples data/lab/samples.jsonl --out data/lab/prefs_me.jsonl \
        --labeller human
    python -m minirlhf.lab.annotate label --samples data/lab/samples.jsonl --out data/lab/prefs_ai.jsonl \\
        --labeller rm --rm_ckpt out/rm.pt

A labeller is any object with `label(prompt, a, b, ended_a=True, ended_b=True)` returning 0 (a is better),
1 (b is better) or None (skip the pair); raising StopLabelling ends the session. ScoreLabeller turns any
scoring function into one (a trained reward model labelling pairs is RLAIF, AI feedback). Labelling appends to --out
one line per label and skips pairs already there, so it can stop and resume (a skipped pair comes back).
"""

import argparse
import itertools
import json
import math
import os
import random
import sys

from minirlhf.data import PREFERENCE_FIELDS, PROMPT_FIELDS, read_jsonl, write_jsonl
from minirlhf.files import open_append
from minirlhf.flags import number
from minirlhf.lab.gold import gold
from minirlhf.sampling import Sample, pack, reward_scores, sample_responses
from minirlhf.lab.world import FAMILIES, parse_prompt


class StopLabelling(Exception):
    """Raised by a labeller to end the session; what was labelled so far is already saved."""


class SimulatedAnnotator:
    """A noisy, possibly biased human, built on the gold judge.

        P(a > b) = sigmoid((gold(a) - gold(b) + bias * (filler(a) - filler(b))) / temperature)

    then the label is flipped with probability flip_rate. temperature -> 0 is a perfect judge (temperature 0:
    exactly gold, ties skipped); bias > 0 likes filler that gold penalises; `families` (None = all) is the
    coverage: prompts of other families are skipped.
    """

    draws_in_order = True  # its labels come from one random stream: a resumed labelling replays the labels
    # already saved (label_pairs), so it labels the rest exactly as an uninterrupted run would

    def __init__(self, temperature=0.1, flip_rate=0.0, bias=0.0, families=None, seed=0):
        self.temperature, self.flip_rate, self.bias = temperature, flip_rate, bias
        self.families = set(families) if families else None
        self.rng = random.Random(seed)

    def prob_a(self, prompt, a, b, ended_a=True, ended_b=True):
        """P(a is preferred to b) before the flip."""
        ja, jb = gold(prompt, a, ended_a), gold(prompt, b, ended_b)
        margin = ja.score - jb.score + self.bias * (ja.filler - jb.filler)
        if self.temperature == 0:
            return 0.5 if margin == 0 else float(margin > 0)
        z = max(-50.0, min(50.0, margin / self.temperature))
        return 1 / (1 + math.exp(-z))

    def label(self, prompt, a, b, ended_a=True, ended_b=True):
        if self.families is not None and parse_prompt(prompt).family not in self.families:
            return None  # not covered: this annotator never sees the family
        p = self.prob_a(prompt, a, b, ended_a, ended_b)
        if self.temperature == 0 and p == 0.5:
            return None  # a perfect judge with no preference
        choice = 0 if self.rng.random() < p else 1
        return 1 - choice if self.rng.random() < self.flip_rate else choice


class HumanLabeller:
    """You, in a terminal: shows a prompt and two responses, reads 1 / 2 / s (skip) / q (quit).

    A person's time is the scarcest thing in RLHF: give it pairs from make_pairs(rows, distinct=True), so that
    two identical samples of a prompt never show you the same two texts twice. label_pairs calls start() first,
    which says how many pairs wait.
    """

    def __init__(self, stdin=None, stdout=None):
        self.stdin, self.stdout = stdin or sys.stdin, stdout or sys.stdout
        self.shown, self.waiting = 0, None

    def start(self, waiting, already):
        self.waiting = waiting
        self.stdout.write(f"{waiting} distinct pairs wait to be labelled ({already} labelled earlier). "
                          "Type 1 or 2 for the better response, s to skip, q to stop (run again to resume).\n")

    def label(self, prompt, a, b, ended_a=True, ended_b=True):
        self.shown += 1
        def show(text, ended):
            return (text if text.strip() else " (empty)") + ("" if ended else "   [cut off: no end-of-text]")
        of = "" if self.waiting is None else f" of {self.waiting}"
        self.stdout.write(f"\n===== pair {self.shown}{of} =====\n{prompt}\n"
                          f"--- [1]{show(a, ended_a)}\n--- [2]{show(b, ended_b)}\n")
        while True:
            self.stdout.write("Which response is better? [1/2, s = skip, q = quit]: ")
            self.stdout.flush()
            line = self.stdin.readline()
            if not line:  # end of input: stop like q
                raise StopLabelling
            answer = line.strip().lower()
            if answer in ("1", "2"):
                return int(answer) - 1
            if answer in ("s", "skip"):
                return None
            if answer in ("q", "quit"):
                raise StopLabelling
            self.stdout.write(f"  {answer!r}? type 1, 2, s or q\n")


class ScoreLabeller:
    """Any scoring function as a labeller: prefers the response with the higher score(prompt, response, ended).

    E.g. ScoreLabeller(lambda p, r, e: gold(p, r, e).score) is the gold judge; ties are skipped.
    """

    def __init__(self, score):
        self.score = score

    def label(self, prompt, a, b, ended_a=True, ended_b=True):
        sa, sb = self.score(prompt, a, ended_a), self.score(prompt, b, ended_b)
        return None if sa == sb else int(sb > sa)


class RewardModelLabeller:
    """AI feedback: a trained reward model prefers the response it scores higher (ties skipped).

    reward_mean / reward_std normalise a raw reward model. train_rm.py already folds its normalisation into the
    score head, so its checkpoints are used as they are (their reward_mean / reward_std extras record the raw
    statistics, for information; applying them again would normalise twice).
    """

    def __init__(self, reward_model, tok, reward_mean=0.0, reward_std=1.0):
        self.reward_model, self.tok = reward_model, tok
        self.reward_mean, self.reward_std = reward_mean, reward_std

    @classmethod
    def from_checkpoint(cls, path, device="cpu"):
        from minirlhf.checkpoint import load_model
        model, tok, _ = load_model(path, expect="scalar", device=device)
        return cls(model, tok)  # the checkpoint's output is already normalised (see the class docstring)

    def score(self, prompt, responses, ended):
        """Scores of several responses to one prompt, read at the last real token (the end-of-text if any)."""
        samples = [Sample(prompt, r, e, self.tok.encode(prompt), self.tok.encode(r) + [self.tok.eot_token] * e)
                   for r, e in zip(responses, ended)]
        ids, mask, _ = pack(samples, self.tok.pad_token)
        device = next(self.reward_model.parameters()).device
        return reward_scores(self.reward_model, ids.to(device), mask.to(device),
                             self.reward_mean, self.reward_std).tolist()

    def label(self, prompt, a, b, ended_a=True, ended_b=True):
        sa, sb = self.score(prompt, [a, b], [ended_a, ended_b])
        return None if sa == sb else int(sb > sa)


# ----------------------------------------------------------------------------- the two steps


def sample_rows(model, tok, prompts, k=2, **sampling):
    """k samples per prompt -> rows {"prompt", "response", "ended", "family", "group"}; group = prompt index."""
    samples = sample_responses(model, tok, [p for p in prompts for _ in range(k)], **sampling)
    return [{"prompt": s.prompt, "response": s.text, "ended": s.ended, "family": parse_prompt(s.prompt).family,
             "group": i // k} for i, s in enumerate(samples)]


def make_pairs(rows, distinct=False):
    """Every pair of different responses within a group (k responses give up to k(k-1)/2 pairs).

    Two identical samples of a prompt (A, B, A') make the pairs (A, B) and (B, A') with the same two texts. The
    simulated annotators label both (a response the policy samples often weighs more, as it would with a crowd
    of annotators); distinct=True keeps each unordered pair of texts once per group, for a person.
    """
    groups = {}
    for row in rows:
        groups.setdefault(row.get("group", row["prompt"]), []).append(row)
    pairs, seen = [], set()
    for key, group in groups.items():
        for a, b in itertools.combinations(group, 2):
            sides = frozenset(((a["response"], a.get("ended", True)), (b["response"], b.get("ended", True))))
            if len(sides) == 2 and not (distinct and (key, sides) in seen):
                seen.add((key, sides))
                pairs.append((a, b))
    return pairs


def label_pairs(pairs, labeller, out_path, labeller_name="labeller"):
    """Label pairs, appending one preference row per label to out_path; pairs already there are skipped.

    Returns counts {"labelled", "skipped", "already", "gold_agreement"}. gold_agreement is the fraction of
    new labels that agree with the gold judge (pairs where gold has a strict preference; None if there are
    none): 1.0 for a perfect annotator, 1 - flip_rate for a flipping one, about 0.5 for a coin.
    """
    f = open_append(out_path)  # drops a label half-written when a run was killed: it is given again below
    done = set()
    if os.path.getsize(out_path) > 0:
        done = {(r["prompt"], *sorted((r["chosen"], r["rejected"]))) for r in read_jsonl(out_path, PREFERENCE_FIELDS)}
    counts = {"labelled": 0, "skipped": 0, "already": 0}
    if hasattr(labeller, "start"):  # a person is told how much work waits
        already = sum((a["prompt"], *sorted((a["response"], b["response"]))) in done for a, b in pairs)
        labeller.start(len(pairs) - already, already)
    agree = disagree = 0
    with f:
        for a, b in pairs:
            prompt = a["prompt"]
            if (prompt, *sorted((a["response"], b["response"]))) in done:
                counts["already"] += 1
                if getattr(labeller, "draws_in_order", False):  # replayed: its random stream stays in step
                    labeller.label(prompt, a["response"], b["response"], a.get("ended", True), b.get("ended", True))
                continue
            ended_a, ended_b = a.get("ended", True), b.get("ended", True)
            try:
                choice = labeller.label(prompt, a["response"], b["response"], ended_a, ended_b)
            except StopLabelling:
                break
            if choice is None:
                counts["skipped"] += 1
                continue
            chosen, rejected = (a, b) if choice == 0 else (b, a)
            f.write(json.dumps({"prompt": prompt, "chosen": chosen["response"], "rejected": rejected["response"],
                                "family": parse_prompt(prompt).family, "chosen_ended": chosen.get("ended", True),
                                "rejected_ended": rejected.get("ended", True), "labeller": labeller_name}) + "\n")
            f.flush()  # a label is saved the moment it is given
            counts["labelled"] += 1
            margin = gold(prompt, chosen["response"], chosen.get("ended", True)).score - \
                gold(prompt, rejected["response"], rejected.get("ended", True)).score
            agree, disagree = agree + (margin > 0), disagree + (margin < 0)
    counts["gold_agreement"] = agree / (agree + disagree) if agree + disagree else None
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="sample k responses per prompt from a checkpoint")
    s.add_argument("--ckpt", required=True, help="policy checkpoint (usually the SFT model)")
    s.add_argument("--prompts", required=True, help="prompts JSONL {'prompt'}")
    s.add_argument("--out", required=True, help="samples JSONL to write")
    s.add_argument("--k", type=number(int, ge=2), default=2, help="responses per prompt (>= 2)")
    s.add_argument("--n_prompts", type=number(int, ge=1), default=None, help="use the first n prompts (default: all)")
    s.add_argument("--temperature", type=number(float, gt=0), default=1.0)
    s.add_argument("--max_new_tokens", type=number(int, ge=1), default=32)
    s.add_argument("--batch_size", type=number(int, ge=1), default=64)
    s.add_argument("--seed", type=number(int, ge=0), default=0)
    s.add_argument("--device", default="cpu")
    lab = sub.add_parser("label", help="label pairs of samples, appending to a preferences JSONL")
    lab.add_argument("--samples", required=True, help="samples JSONL written by `sample`")
    lab.add_argument("--out", required=True, help="preferences JSONL to append to (resumes if it exists)")
    lab.add_argument("--labeller", choices=["sim", "gold", "human", "rm"], default="sim",
                     help="sim: simulated annotator; gold: the gold judge itself; human: you; rm: a reward model")
    lab.add_argument("--temperature", type=number(float, ge=0), default=0.1, help="sim: annotator noise (0 = gold)")
    lab.add_argument("--flip_rate", type=number(float, ge=0, le=1), default=0.0, help="sim: probability of flipping a label")
    lab.add_argument("--bias", type=number(float), default=0.0, help="sim: extra liking for filler (> 0: reward hacking)")
    lab.add_argument("--families", default=None,
                     help=f"sim: comma-separated coverage (default all: {','.join(FAMILIES)})")
    lab.add_argument("--rm_ckpt", default=None, help="rm: reward model checkpoint")
    lab.add_argument("--seed", type=number(int, ge=0), default=0)
    args = parser.parse_args(argv)

    from minirlhf.training import set_cpu_threads
    set_cpu_threads(0)  # the lab's models are tiny (see set_cpu_threads)
    if args.command == "sample":
        from minirlhf.checkpoint import load_model
        model, tok, _ = load_model(args.ckpt, expect="gpt", device=args.device)
        prompts = [r["prompt"] for r in read_jsonl(args.prompts, PROMPT_FIELDS)][: args.n_prompts]
        rows = sample_rows(model, tok, prompts, k=args.k, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, batch_size=args.batch_size, seed=args.seed)
        write_jsonl(args.out, rows)
        print(f"{len(rows)} samples ({len(prompts)} prompts x {args.k}) -> {args.out}")
        return

    if args.labeller in ("sim", "gold"):
        families = args.families.split(",") if args.families else None
        unknown = set(families or []) - set(FAMILIES)
        if unknown:
            parser.error(f"unknown families {sorted(unknown)}; choose from {FAMILIES}")
        if args.labeller == "gold":
            labeller, name = SimulatedAnnotator(0.0, 0.0, 0.0, families, args.seed), "gold"
        else:
            labeller = SimulatedAnnotator(args.temperature, args.flip_rate, args.bias, families, args.seed)
            name = f"sim(temperature={args.temperature},flip_rate={args.flip_rate},bias={args.bias})"
    elif args.labeller == "human":
        labeller, name = HumanLabeller(), "human"
    else:
        if not args.rm_ckpt:
            parser.error("--labeller rm needs --rm_ckpt")
        labeller, name = RewardModelLabeller.from_checkpoint(args.rm_ckpt), f"rm({args.rm_ckpt})"
    pairs = make_pairs(read_jsonl(args.samples, ("prompt", "response")), distinct=args.labeller == "human")
    counts = label_pairs(pairs, labeller, args.out, name)
    agreement = "n/a" if counts["gold_agreement"] is None else f"{counts['gold_agreement']:.1%}"
    print(f"{counts['labelled']} new labels, {counts['skipped']} skipped, {counts['already']} already in {args.out} "
          f"(of {len(pairs)} pairs); agreement with gold on the new labels: {agreement}")


if __name__ == "__main__":
    main()
