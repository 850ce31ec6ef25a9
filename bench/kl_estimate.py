"""How far is PPO's sampled KL estimate from the exact KL? Per response and per PPO iteration, on the lab.

    python bench/kl_estimate.py --policy out/quickstart/ppo/ckpt.pt --ref out/quickstart/sft/ckpt.pt \
        --prompts out/quickstart/data/prompts_train.jsonl --log out/quickstart/round1/ppo/log.jsonl,out/quickstart/ppo/log.jsonl

PPO's reward penalises, and objective/kl logs, the sampled estimate of KL(policy || SFT) per response:
k1 = sum_t log pi(a_t) - log pi_ref(a_t) over the sampled tokens. Its expectation is the sequence KL, and so is
that of the exact per-token KL over the whole vocabulary summed along the same response (kernels.full_kl; the
chain rule of KL), which PPO logs as objective/kl_exact. This script samples --n responses from the policy at
PPO's temperature and compares the two per response (mean |k1 - exact|, correlation, how often a token's k1 is
negative), and, given PPO logs, per iteration (objective/kl against objective/kl_exact). Results go to
bench/results/kl_estimate_<device>.json.
"""

import argparse
import datetime
import json
import os
import random
import statistics
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from minirlhf import kernels  # noqa: E402
from minirlhf.checkpoint import load_model  # noqa: E402
from minirlhf.data import PROMPT_FIELDS, read_jsonl  # noqa: E402
from minirlhf.sampling import pack, sample_responses  # noqa: E402


def compare(xs, ys):
    """Mean and spread of each, mean |x - y|, Pearson correlation (None if either is constant)."""
    try:
        corr = statistics.correlation(xs, ys)
    except statistics.StatisticsError:
        corr = None
    return {"mean_estimate": statistics.fmean(xs), "mean_exact": statistics.fmean(ys),
            "std_estimate": statistics.pstdev(xs), "std_exact": statistics.pstdev(ys),
            "mean_abs_diff": statistics.fmean(abs(x - y) for x, y in zip(xs, ys)), "correlation": corr, "n": len(xs)}


@torch.no_grad()
def per_response(policy, ref, tok, prompts, temperature, max_new_tokens, seed):
    samples = sample_responses(policy, tok, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                               seed=seed)
    k1, exact, negative, tokens = [], [], 0, 0
    for i in range(0, len(samples), 64):
        ids, mask, response_mask = pack(samples[i: i + 64], tok.pad_token)  # left-padded (B, T)
        logits, ref_logits = policy(ids, mask)[:, :-1], ref(ids, mask)[:, :-1]  # (B, T - 1, V): token t + 1
        m = response_mask[:, 1:].float()
        lp = kernels.logprobs(logits, ids[:, 1:], temperature=temperature)
        ref_lp = kernels.logprobs(ref_logits, ids[:, 1:], temperature=temperature)
        ratio = (lp - ref_lp) * m
        k1 += ratio.sum(1).tolist()
        exact += (kernels.full_kl(logits, ref_logits, temperature=temperature) * m).sum(1).tolist()
        negative, tokens = negative + int(((ratio < 0) & (m > 0)).sum()), tokens + int(m.sum())
    return {**compare(k1, exact), "negative_token_fraction": negative / tokens}


def per_iteration(log_paths):
    rows = [json.loads(line) for path in log_paths.split(",") for line in open(path) if line.strip()]
    rows = [r for r in rows if "objective/kl_exact" in r]
    if not rows:
        raise SystemExit(f"{log_paths}: no objective/kl_exact in the log (PPO with --exact_kl true logs it)")
    return compare([r["objective/kl"] for r in rows], [r["objective/kl_exact"] for r in rows])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policy", required=True, help="PPO checkpoint")
    p.add_argument("--ref", required=True, help="the SFT checkpoint PPO was penalised toward")
    p.add_argument("--prompts", required=True, help="prompts JSONL (PPO's training prompts)")
    p.add_argument("--log", default=None, help="PPO log.jsonl (A,B: the rounds of one run) for the per-iteration view")
    p.add_argument("--n", type=int, default=512, help="responses sampled")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    policy, tok, _ = load_model(args.policy, expect="gpt")
    ref, _, _ = load_model(args.ref, expect="gpt")
    prompts = [r["prompt"] for r in read_jsonl(args.prompts, PROMPT_FIELDS)]
    rng = random.Random(args.seed)
    prompts = [rng.choice(prompts) for _ in range(args.n)]
    out = {"per_response": per_response(policy, ref, tok, prompts, args.temperature, args.max_new_tokens, args.seed)}
    if args.log:
        out["per_iteration"] = per_iteration(args.log)
    for view, stats in out.items():
        print(f"{view}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()))
    path = args.results or os.path.join(ROOT, "bench", "results", "kl_estimate_cpu.json")
    with open(path, "w") as f:
        json.dump({**out, "args": vars(args), "torch": torch.__version__, "date": datetime.date.today().isoformat()},
                  f, indent=1)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
