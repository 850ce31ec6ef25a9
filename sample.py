"""Talk to your models: sample answers from one or more checkpoints, side by side (nanoGPT's sample.py, for RLHF).

    python sample.py --ckpt out/quickstart/ppo/ckpt.pt                       # type questions; empty line ends
    python sample.py --ckpt SFT=out/quickstart/sft/ckpt.pt --ckpt PPO=out/quickstart/ppo/ckpt.pt \\
        --rm out/quickstart/rm/ckpt.pt --prompt "What is 2 + 3?" --prompt "Which city is the capital of Norvale?"
    python sample.py --ckpt PPO=out/quickstart/ppo/ckpt.pt --prompts out/quickstart/data/prompts_eval.jsonl --n 3
    python sample.py --ckpt out/hh/ppo/ckpt.pt --temperature 1.0 --top_p 0.9 --max_new_tokens 128   # GPT-2

Prompts come from --prompt (repeatable), from --prompts FILE (JSONL with a "prompt" field, or plain text, one
prompt a line), or, when neither is given and stdin is a terminal, from an interactive loop. A bare question is
put in the chat format the models were trained on ("Human: ...\\n\\nAssistant:" for the lab's tokenizer,
"\\n\\nHuman: ...\\n\\nAssistant:" for GPT-2's, as in data/hh_rlhf); a prompt that already ends in "Assistant:"
is used as it is. Every checkpoint answers every prompt with the same seed, so the columns differ by the model
alone (and, with --greedy, not at all by chance).

On the lab's prompts each answer gets the gold judge's score (minirlhf/lab/gold.py), and with --rm the reward
model's score (normalised: SFT samples score mean 0, std 1) beside it: the proxy beside the truth, answer by answer.
The defaults sample as PPO does (temperature 0.7, no top-k / top-p); top-k and top-p only narrow what is sampled.
"""

import argparse
import json
import os
import sys

import torch

from minirlhf.checkpoint import load_model
from minirlhf.sampling import batched, reward_scores, sample_responses
from minirlhf.training import set_cpu_threads


def chat_prompt(text, tokenizer_name):
    """A bare question -> the chat format of the tokenizer's training data; a formatted prompt stays as it is."""
    if text.rstrip().endswith("Assistant:"):
        return text.rstrip()
    prefix = "Human: " if tokenizer_name == "lab" else "\n\nHuman: "
    return f"{prefix}{text.strip()}\n\nAssistant:"


def read_prompts(path):
    """Prompts from a file: JSONL with a "prompt" field (the project's prompt files) or plain text lines."""
    if not os.path.exists(path):
        raise SystemExit(f"--prompts {path}: no such file")
    prompts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                try:
                    prompt = json.loads(line)["prompt"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise SystemExit(f"{path}:{n}: not a JSON object with a 'prompt' field ({e})") from None
                prompts.append(prompt)
            else:
                prompts.append(line.rstrip("\n"))
    return prompts


def gold_score(prompt, text, ended):
    """The gold judge's score on a lab prompt; None on any other prompt."""
    from minirlhf.lab.gold import gold
    from minirlhf.lab.world import parse_prompt
    return None if parse_prompt(prompt) is None else gold(prompt, text, ended).score


def answer(models, prompts, rm, args):
    """Every model answers every prompt (n samples each) -> printed side by side; returns the rows printed."""
    temperature = 0.0 if args.greedy else args.temperature
    rows = []
    for name, (model, tok) in models.items():
        formatted = [chat_prompt(p, tok.name) for p in prompts]
        samples = sample_responses(model, tok, [p for p in formatted for _ in range(args.n)],
                                   max_new_tokens=args.max_new_tokens, temperature=temperature, seed=args.seed,
                                   top_k=args.top_k, top_p=args.top_p)
        scores = [None] * len(samples)
        if rm is not None:
            with torch.no_grad():
                scores = batched(lambda ids, mask, _: reward_scores(rm, ids, mask), samples, tok.pad_token,
                                 device=args.device).tolist()
        for i, (s, score) in enumerate(zip(samples, scores)):
            rows.append({"prompt_index": i // args.n, "prompt": s.prompt, "model": name, "response": s.text,
                         "ended": s.ended, "rm": score,
                         "gold": gold_score(s.prompt, s.text, s.ended)})
    width = max(len(name) for name in models)
    for p in range(len(prompts)):
        mine = [r for r in rows if r["prompt_index"] == p]
        print(f"\n=== {mine[0]['prompt']!r}")
        for r in mine:
            extra = "" if r["ended"] else "  [cut off: no end-of-text]"
            extra += "" if r["rm"] is None else f"  | rm {r['rm']:+.2f}"
            extra += "" if r["gold"] is None else f"  gold {r['gold']:+.2f}"
            print(f"[{r['model']:>{width}}]{r['response']}{extra}")
    sys.stdout.flush()
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", action="append", required=True, metavar="[NAME=]PATH",
                   help="policy checkpoint (SFT, PPO or DPO); repeat to compare: --ckpt SFT=... --ckpt PPO=...")
    p.add_argument("--prompt", action="append", default=[], help="a prompt or bare question (repeatable)")
    p.add_argument("--prompts", default=None, help="file of prompts: JSONL with a 'prompt' field, or one a line")
    p.add_argument("--n", type=int, default=1, help="samples per prompt and checkpoint")
    p.add_argument("--max_new_tokens", type=int, default=48, help="response length limit, in tokens")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (PPO samples the lab at 0.7)")
    p.add_argument("--top_k", type=int, default=None, help="sample among the k most likely tokens only")
    p.add_argument("--top_p", type=float, default=None, help="sample from the smallest set of mass >= top_p")
    p.add_argument("--greedy", action="store_true", help="always the most likely token (same as --temperature 0)")
    p.add_argument("--rm", default=None, help="reward model checkpoint: print each answer's score")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (every checkpoint answers with the same one)")
    p.add_argument("--device", default="auto", help="'auto' (cuda if there is one), 'cpu', 'cuda', 'cuda:1', ...")
    args = p.parse_args(argv)
    if args.n < 1 or args.max_new_tokens < 1:
        p.error("--n and --max_new_tokens must be at least 1")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        p.error(f"--top_p {args.top_p}: must be in (0, 1]")
    if args.top_k is not None and args.top_k < 1:
        p.error(f"--top_k {args.top_k}: must be at least 1")

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    models = {}
    for spec in args.ckpt:
        folder = os.path.basename(os.path.dirname(os.path.abspath(spec)))  # out/quickstart/ppo/ckpt.pt -> "ppo"
        name, path = spec.split("=", 1) if "=" in spec else (folder, spec)
        if name in models:
            name = path
        model, tok, _ = load_model(path, expect="gpt", device=args.device)
        models[name] = (model, tok)
    set_cpu_threads(max(model.num_params() for model, _ in models.values()))
    rm = None
    if args.rm:
        rm, rm_tok, _ = load_model(args.rm, expect="scalar", device=args.device)
        for name, (_, tok) in models.items():
            if tok.name != rm_tok.name:
                p.error(f"--rm {args.rm} uses tokenizer {rm_tok.name!r} but {name} uses {tok.name!r}")

    prompts = list(args.prompt) + (read_prompts(args.prompts) if args.prompts else [])
    if prompts:
        return answer(models, prompts, rm, args)
    if not sys.stdin.isatty():
        p.error("no prompts: give --prompt or --prompts FILE (stdin is not a terminal, so no interactive loop)")
    print(f"{', '.join(models)}: type a question and Enter (empty line or Ctrl-D to end)")
    while True:
        print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            break
        answer(models, [line.rstrip("\n")], rm, args)


if __name__ == "__main__":
    main()
