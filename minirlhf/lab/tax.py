"""What a policy bought and what it paid: gold (overall, per family), the proxy, KL to SFT, and the alignment tax.

    python -m minirlhf.lab.tax SFT=out/sft/ckpt.pt PPO=out/ppo/ckpt.pt --bon BoN16=out/sft/ckpt.pt@out/rm/ckpt.pt@16 \\
        --ref out/sft/ckpt.pt --rm out/rm/ckpt.pt --demos data/lab/sft_eval.jsonl \\
        --pairs data/lab/pairs_gold_eval.jsonl --json out/tax.json

Every policy answers the same held-out prompts k times (default 8, at PPO's temperature 0.7, same seed), and
the gold judge grades every answer. Per policy (one JSON object, keys as in evaluate.ROWS plus):

    diversity       distinct responses per prompt over the k samples (1 = always the same answer)
    over_refusal_rate   benign look-alikes refused (from evaluate.summarize)
    demo_logprob    mean log-likelihood per token of held-out demonstrations (--demos, SFT format) under the
                    policy at temperature 1: how much of the demonstrated behaviour it still covers (the lab's
                    stand-in for InstructGPT's regressions on public NLP tasks). Not defined for best-of-n.
    kl              KL(policy || ref) per response (--ref): sum_t log pi - log pi_ref on the policy's samples at
                    the sampling temperature; for best-of-n, the analytic log n - (n-1)/n, and kl_measured (see
                    bestofn.py) from its k * n samples
    rm_score        the proxy (--rm)
    rm_accuracy     with --rm and --pairs: the reward model's agreement with the pairs' labels (gold-labelled
                    held-out pairs: its accuracy against the truth)

A best-of-n policy is given as NAME=POLICY@SCORER@N (SCORER: a reward-model checkpoint or 'gold').
"""

import argparse
import json
import os

import torch

from minirlhf.flags import number
from minirlhf.data import PREFERENCE_FIELDS, PROMPT_FIELDS, SFT_FIELDS, encode_example, read_jsonl
from minirlhf.lab.bestofn import analytic_kl, empirical_kl, load_scorer, sample_groups, score_groups
from minirlhf.lab.evaluate import rm_accuracy, summarize
from minirlhf.sampling import Sample, batched, reward_scores, sample_responses
from minirlhf.scoring import sequence_logprobs


def diversity(samples, k):
    """Distinct (text, ended) responses per prompt, over consecutive groups of k samples of the same prompt."""
    groups = [samples[i:i + k] for i in range(0, len(samples), k)]
    return sum(len({(s.text, s.ended) for s in g}) for g in groups) / len(groups)


@torch.no_grad()
def demo_logprob(model, tok, rows, batch_size=64):
    """Mean log-prob per token (nats, end-of-text included) of demonstration responses under the model, T = 1."""
    samples = []
    for r in rows:
        prompt_ids, response_ids, _ = encode_example(tok, r["prompt"], r["response"], model.config.block_size)
        samples.append(Sample(r["prompt"], r["response"], True, prompt_ids, response_ids))
    device = model.lm_head.weight.device
    total = batched(lambda ids, mask, rmask: sequence_logprobs(model, ids, mask, rmask, 1.0), samples,
                    tok.pad_token, batch_size, device).sum().item()
    return total / sum(len(s.response_ids) for s in samples)


@torch.no_grad()
def policy_report(model, tok, prompts, k, *, bon=None, ref=None, rm=None, demos=None, temperature=0.7,
                  max_new_tokens=32, batch_size=256, seed=0):
    """The numbers of one policy (bon = (scorer, n) makes it best-of-n of `model`) -> {metric: float}."""
    sampling = dict(temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
    report = {}
    if bon is None:
        samples = sample_responses(model, tok, [p for p in prompts for _ in range(k)], **sampling)
    else:  # k independent best-of-n draws per prompt: k groups of n samples, the best of each
        scorer, n = bon
        groups = sample_groups(model, tok, [p for p in prompts for _ in range(k)], n, **sampling)
        scores = score_groups(scorer, groups)
        samples = [g[max(range(n), key=s.__getitem__)] for g, s in zip(groups, scores)]
        pooled = [(sum(groups[i * k:(i + 1) * k], []), sum(scores[i * k:(i + 1) * k], [])) for i in range(len(prompts))]
        report["kl"] = analytic_kl(n)
        report["kl_measured"] = sum(empirical_kl([(s.text, s.ended) for s in g], sc, n) for g, sc in pooled) / len(pooled)
    report.update(summarize(samples)[0])
    report["diversity"] = diversity(samples, k)
    device = model.lm_head.weight.device
    if rm is not None:
        report["rm_score"] = batched(lambda ids, mask, _: reward_scores(rm, ids, mask), samples, tok.pad_token,
                                     batch_size, device).mean().item()
    if ref is not None and bon is None:
        t = temperature if temperature > 0 else 1.0
        report["kl"] = batched(lambda ids, mask, rmask: sequence_logprobs(model, ids, mask, rmask, t)
                               - sequence_logprobs(ref, ids, mask, rmask, t), samples, tok.pad_token, batch_size,
                               device).mean().item()
    if demos and bon is None:
        report["demo_logprob"] = demo_logprob(model, tok, demos)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ckpts", nargs="*", help="policy checkpoints, NAME=PATH")
    parser.add_argument("--bon", nargs="*", default=[], help="best-of-n policies, NAME=POLICY@SCORER@N")
    parser.add_argument("--ref", default=None, help="the SFT checkpoint: adds KL to it")
    parser.add_argument("--rm", default=None, help="reward model: adds the proxy score (and --pairs accuracy)")
    parser.add_argument("--pairs", default=None, help="gold-labelled held-out preference JSONL: RM accuracy")
    parser.add_argument("--demos", default=None, help="held-out demonstrations (SFT JSONL): their log-likelihood")
    parser.add_argument("--prompts", required=True, help="held-out prompts JSONL")
    parser.add_argument("--k", type=number(int, ge=2), default=8, help="samples per prompt (diversity needs k >= 2)")
    parser.add_argument("--temperature", type=number(float, gt=0), default=0.7)
    parser.add_argument("--max_new_tokens", type=number(int, ge=1), default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", required=True, help="write {name: metrics} here")
    args = parser.parse_args(argv)
    if not args.ckpts and not args.bon:
        parser.error("give policies (NAME=PATH) and/or --bon NAME=POLICY@SCORER@N")
    if args.pairs and not args.rm:
        parser.error("--pairs measures a reward model: give it with --rm")

    from minirlhf.checkpoint import load_model
    from minirlhf.training import set_cpu_threads
    set_cpu_threads(0)  # the lab's models are tiny (see set_cpu_threads)
    prompts = [r["prompt"] for r in read_jsonl(args.prompts, PROMPT_FIELDS)]
    demos = read_jsonl(args.demos, SFT_FIELDS) if args.demos else None
    ref = load_model(args.ref, expect="gpt")[0] if args.ref else None
    rm = load_model(args.rm, expect="scalar")[0] if args.rm else None
    common = dict(ref=ref, rm=rm, demos=demos, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                  seed=args.seed)
    out = {}
    for spec in args.ckpts:
        if "=" not in spec:
            parser.error(f"policy {spec!r}: expected NAME=PATH")
        name, path = spec.split("=", 1)
        model, tok, _ = load_model(path, expect="gpt")
        out[name] = policy_report(model, tok, prompts, args.k, **common)
    for spec in args.bon:
        try:
            name, rest = spec.split("=", 1)
            path, scorer, n = rest.rsplit("@", 2)
            n = int(n)
        except ValueError:
            parser.error(f"--bon {spec!r}: expected NAME=POLICY@SCORER@N, e.g. BoN16=out/sft/ckpt.pt@out/rm/ckpt.pt@16")
        model, tok, _ = load_model(path, expect="gpt")
        out[name] = policy_report(model, tok, prompts, args.k, bon=(load_scorer(scorer), n), **common)
    if rm is not None and args.pairs:
        out["rm"] = {"rm_accuracy": rm_accuracy(rm, tok, read_jsonl(args.pairs, PREFERENCE_FIELDS))}
    for name, r in out.items():
        print(f"{name:>12}: " + ", ".join(f"{key} {v:.3f}" for key, v in r.items()
                                          if key in ("gold", "kl", "rm_score", "diversity", "over_refusal_rate",
                                                     "demo_logprob", "rm_accuracy")))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
