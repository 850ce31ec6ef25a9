"""Write the lab's data: SFT demonstrations and the train / held-out prompts. Takes about a second.

    python -m minirlhf.lab.make_data --out_dir data/lab [--seed 0 --n_sft 6000 --demo_quality 0.6]

    sft.jsonl            {"prompt", "response", "family", "ideal"}: demonstrations on train prompts, families balanced
    sft_eval.jsonl       the same on held-out prompts (a validation loss for SFT)
    prompts_train.jsonl  {"prompt", "family"}: train prompts, n per family, for preference labelling and PPO
    prompts_eval.jsonl   {"prompt", "family"}: held-out prompts, n per family, for the evaluation report

Train and held-out prompts come from one seeded split (world.split_prompts) and never share a prompt.
Small families (the ten harmful requests x five templates) repeat prompts to reach n per family.

The lab tokenizer (minirlhf/lab/tokenizer.tiktoken) is a byte-level BPE of about 1000 tokens trained on the
lab's text, so that every word and name of the lab is a single token and the models stay tiny. Rebuild it
after changing the world's tables or templates:

    python -m minirlhf.lab.make_data --write_tokenizer
"""

import argparse
import os
import random

from minirlhf.data import write_jsonl
from minirlhf.flags import number
from minirlhf.lab.world import (FAMILIES, FILLER_CLOSERS, FILLER_OPENERS, RAMBLES, balanced, demonstrate,
                                eval_tasks, flawed_content, ideal_response, split_prompts)
from minirlhf.tokenizer import LAB_TOKENIZER_FILE, train_bpe, write_ranks

LAB_VOCAB_SIZE = 1024  # at most 1022 BPE tokens + eot + pad; merging stops early (~1011) once every word is one token


def make_data(seed=0, n_sft=6000, demo_quality=0.6, n_train_per_family=200, n_eval_per_family=20, eval_frac=0.2,
              deference=0.25):
    """The lab's datasets as lists of rows: {"sft", "sft_eval", "prompts_train", "prompts_eval"}."""
    split = split_prompts(seed, eval_frac)
    train = {f: tr for f, (tr, _) in split.items()}
    held_out = {f: ev for f, (_, ev) in split.items()}
    demo_rng, prompt_rng = random.Random(seed + 1), random.Random(seed + 2)  # n_sft does not move the prompts

    def demos(tasks):
        rows = []
        for t in tasks:
            response = demonstrate(t, demo_rng, demo_quality, deference)
            rows.append({"prompt": t.prompt, "response": response, "family": t.family,
                         "ideal": response == ideal_response(t)})
        return rows

    def prompts(tasks):
        return [{"prompt": t.prompt, "family": t.family} for t in tasks]

    return {
        "sft": demos(balanced(train, n_sft // len(FAMILIES), demo_rng)),
        "sft_eval": demos(balanced(held_out, n_eval_per_family, demo_rng)),
        "prompts_train": prompts(balanced(train, n_train_per_family, prompt_rng)),
        "prompts_eval": prompts(eval_tasks(seed, n_eval_per_family, eval_frac)),  # what evaluate uses by default
    }


def lab_corpus(seed=0):
    """Text like the lab's data: every prompt once, the SFT demonstrations, and every flawed answer once.

    Weighting by the demonstrations spends the merges where the tokens will be (frequent phrases such as
    " The capital of" become one or two tokens); every phrase still appears at least once.
    """
    rng = random.Random(seed)
    texts = list(FILLER_OPENERS + FILLER_CLOSERS + RAMBLES)
    for train, held_out in split_prompts(seed).values():
        texts += [t.prompt + flawed_content(t, rng) for t in train + held_out]
    texts += [r["prompt"] + r["response"] for r in make_data(seed)["sft"]]
    return texts


def write_tokenizer(path=LAB_TOKENIZER_FILE, vocab_size=LAB_VOCAB_SIZE):
    ranks = train_bpe(lab_corpus(), vocab_size)
    write_ranks(path, ranks)
    return ranks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", default="data/lab")
    parser.add_argument("--seed", type=number(int, ge=0), default=0, help="the prompt split and the demonstrations")
    parser.add_argument("--n_sft", type=number(int, ge=1), default=6000, help="number of SFT demonstrations")
    parser.add_argument("--demo_quality", type=number(float, ge=0, le=1), default=0.6, help="fraction of ideal demonstrations")
    parser.add_argument("--deference", type=number(float, ge=0, le=1), default=0.25,
                        help="how often the demonstrator repeats a wrong user's answer to a sycophancy probe")
    parser.add_argument("--n_train_prompts", type=number(int, ge=1), default=200, help="train prompts per family")
    parser.add_argument("--n_eval_prompts", type=number(int, ge=1), default=20, help="held-out prompts per family")
    parser.add_argument("--eval_frac", type=number(float, gt=0, lt=1), default=0.2, help="fraction of each family's prompts held out")
    parser.add_argument("--write_tokenizer", action="store_true", help=f"rebuild {LAB_TOKENIZER_FILE} and exit")
    args = parser.parse_args(argv)
    if args.write_tokenizer:
        ranks = write_tokenizer()
        print(f"{len(ranks)} tokens (+ eot + pad) -> {LAB_TOKENIZER_FILE}")
        return
    data = make_data(args.seed, args.n_sft, args.demo_quality, args.n_train_prompts, args.n_eval_prompts,
                     args.eval_frac, args.deference)
    for name, rows in data.items():
        write_jsonl(os.path.join(args.out_dir, f"{name}.jsonl"), rows)
        print(f"{len(rows):6d} rows -> {os.path.join(args.out_dir, name)}.jsonl")


if __name__ == "__main__":
    main()
