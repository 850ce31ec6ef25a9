"""Best-of-n as a policy: sample n responses per prompt, keep the one a scorer rates highest.

    python -m minirlhf.lab.bestofn --ckpt out/sft/ckpt.pt --rm out/rm/ckpt.pt --n 16            # one n
    python -m minirlhf.lab.bestofn --ckpt out/sft/ckpt.pt --rm out/rm/ckpt.pt --n 1,2,4,8,16,32,64 \\
        --n_samples 128 --json out/bon.json                                                  # a curve
    python -m minirlhf.lab.bestofn --ckpt out/sft/ckpt.pt --rm gold --n 16   # the gold judge as the scorer

Best-of-n (rejection sampling, Nakano et al. 2021; Gao et al. 2022) is the simplest way to optimise a policy
against a reward model: no training, and the only knob, n, sets how hard it pushes. It is the baseline beside
PPO and DPO, and the instrument of over-optimisation: the scorer is the proxy, the gold judge says what it
bought.

A scorer is any object with `score(prompt, responses, ended) -> floats` (one per response), like
annotate.RewardModelLabeller (a reward-model checkpoint), GoldScorer (the gold judge) or an ensemble.

The curve over n uses one set of N >= max(n) samples per prompt and, for every n, the unbiased estimate of
E[value of the best of n draws] over all n-subsets of the N samples (Nakano et al. 2021, appendix; Gao et al.
2022): sorted by score, the i-th smallest of N is the best of a random n-subset with probability
C(i-1, n-1) / C(N, n), and samples with equal scores share their ranks' weights (bon_weights). This is far
less noisy than drawing fresh groups of n.

KL(best-of-n || sampling policy), two ways:
    analytic   log n - (n - 1) / n: exact when no two samples can tie (continuous scores), Stiennon et al. 2020,
               Gao et al. 2022; it grows without bound (slowly) in n.
    measured   per prompt, the exact best-of-n KL of the *empirical* distribution of the N samples (distinct
               responses as atoms with their sample frequencies; `bon_distribution`), averaged over prompts.
In a small discrete world many samples are the *same* response: when the best response has mass q, best-of-n
returns it with probability 1 - (1 - q)^n and the KL is at most log(1 / q), so the measured KL saturates
while the analytic one keeps growing. The plug-in estimate is also biased low when N is not much larger than
n (the empirical distribution has at most N atoms): read it for n << N.
"""

import argparse
import json
import math
import os
from collections import Counter

from minirlhf.flags import number
from minirlhf.lab.gold import gold
from minirlhf.sampling import sample_responses


class GoldScorer:
    """The gold judge as a scorer: best-of-n against the truth (the oracle ceiling for a given n)."""

    def score(self, prompt, responses, ended):
        return [gold(prompt, r, e).score for r, e in zip(responses, ended)]


# ----------------------------------------------------------------------------- the math


def analytic_kl(n):
    """KL(best-of-n || base) for continuous scores (no ties): log n - (n - 1) / n nats."""
    return math.log(n) - (n - 1) / n


def bon_distribution(probs, scores, n):
    """Exact best-of-n distribution over discrete atoms: P(the best of n i.i.d. draws from probs is atom i).

    Atoms with equal scores form one level; the level with CDF F below it and mass G wins with probability
    (F + G)^n - F^n, and a tie between different atoms of the level is broken uniformly among the tied draws,
    which (the draws being i.i.d.) shares the level's probability in proportion to the atoms' masses.
    """
    total = sum(probs)
    probs = [p / total for p in probs]
    levels = {}
    for i, s in enumerate(scores):
        levels.setdefault(s, []).append(i)
    out, below = [0.0] * len(probs), 0.0
    for s in sorted(levels):
        mass = sum(probs[i] for i in levels[s])
        win = (below + mass) ** n - below ** n
        for i in levels[s]:
            out[i] = win * probs[i] / mass if mass > 0 else 0.0
        below += mass
    return out


def kl_divergence(p, q):
    """KL(p || q) = sum p log(p / q) over atoms with p > 0 (nats)."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def empirical_kl(responses, scores, n):
    """Measured KL(best-of-n || base) of one prompt: the exact best-of-n KL of the empirical distribution of its
    samples. responses: hashable keys (identical samples are one atom); scores: one per sample (an atom's
    score is its samples' mean, so float noise between identical samples cannot split it)."""
    counts, sums = Counter(responses), Counter()
    for r, s in zip(responses, scores):
        sums[r] += s
    atoms = list(counts)
    probs = [counts[a] / len(responses) for a in atoms]
    return kl_divergence(bon_distribution(probs, [sums[a] / counts[a] for a in atoms], n), probs)


def bon_weights(scores, n):
    """Weights w_i (summing to 1) with sum_i w_i v_i = the unbiased estimate of E[v of the best of n], from N >= n
    samples with these scores: sorted by score, the i-th smallest (1-based) wins a random n-subset with
    probability C(i-1, n-1) / C(N, n).

    Samples with equal scores (the same response sampled twice, or every unfinished response at the fixed
    no-end-of-text score) share their ranks' weights equally: the best-of-n policy breaks a tie between the top
    draws uniformly at random, and a uniformly random order of a tied group gives each member every rank of the
    group with the same probability. The mean is that of any fixed tie order averaged over orders; the variance
    is smaller, as no tied sample's value is picked out by its position."""
    N = len(scores)
    if not 1 <= n <= N:
        raise ValueError(f"best-of-{n} needs 1 <= n <= the {N} samples per prompt")
    order = sorted(range(N), key=scores.__getitem__)
    denom = math.comb(N, n)
    weights = [0.0] * N
    start = 0
    while start < N:  # one group of equal scores at a time: ranks start + 1 .. end
        end = start + 1
        while end < N and scores[order[end]] == scores[order[start]]:
            end += 1
        shared = sum(math.comb(rank - 1, n - 1) for rank in range(start + 1, end + 1)) / (denom * (end - start))
        for i in order[start:end]:
            weights[i] = shared
        start = end
    return weights


# ----------------------------------------------------------------------------- the policy


def sample_groups(model, tok, prompts, N, **sampling):
    """N samples per prompt -> [[Sample] * N] per prompt (sampling: temperature, max_new_tokens, batch_size, seed)."""
    flat = sample_responses(model, tok, [p for p in prompts for _ in range(N)], **sampling)
    return [flat[i * N:(i + 1) * N] for i in range(len(prompts))]


def score_groups(scorer, groups):
    """scorer.score over each prompt's samples -> [[float] * N] per prompt."""
    return [[float(x) for x in scorer.score(g[0].prompt, [s.text for s in g], [s.ended for s in g])]
            for g in groups]


def best_of_n(model, tok, prompts, scorer, n, **sampling):
    """The best-of-n policy: one response per prompt, the highest scored of n samples -> [Sample]."""
    groups = sample_groups(model, tok, prompts, n, **sampling)
    scores = score_groups(scorer, groups)
    return [g[max(range(n), key=s.__getitem__)] for g, s in zip(groups, scores)]


def bon_curve(groups, proxy, ns, families=None):
    """Over-optimisation of best-of-n from one set of samples: for each n, the unbiased best-of-n estimates of
    gold and proxy (overall and per family), and the KL to the sampling policy, analytic and measured.

    groups: [[Sample] * N] per prompt; proxy: their scores by the scorer being optimised."""
    golds = [[gold(s.prompt, s.text, s.ended).score for s in g] for g in groups]
    fams = [gold(g[0].prompt, g[0].text).family for g in groups]
    keys = [[(s.text, s.ended) for s in g] for g in groups]
    rows = []
    for n in ns:
        weights = [bon_weights(p, n) for p in proxy]
        g_est = [sum(w * v for w, v in zip(ws, gs)) for ws, gs in zip(weights, golds)]
        p_est = [sum(w * v for w, v in zip(ws, ps)) for ws, ps in zip(weights, proxy)]
        row = {"n": n, "gold": _mean(g_est), "proxy": _mean(p_est), "kl_analytic": analytic_kl(n),
               "kl_measured": _mean([empirical_kl(k, p, n) for k, p in zip(keys, proxy)])}
        for f in families or sorted(set(fams)):
            row[f"gold/{f}"] = _mean([g for g, fam in zip(g_est, fams) if fam == f])
        rows.append(row)
    return rows


def _mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def load_scorer(spec, device="cpu"):
    """'gold' -> GoldScorer; a reward-model checkpoint path -> annotate.RewardModelLabeller."""
    if spec == "gold":
        return GoldScorer()
    from minirlhf.lab.annotate import RewardModelLabeller
    return RewardModelLabeller.from_checkpoint(spec, device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="the sampling policy (usually the SFT model)")
    parser.add_argument("--rm", required=True, help="the scorer: a reward-model checkpoint, or 'gold'")
    parser.add_argument("--n", default="16", help="n, or comma-separated n's for a curve")
    parser.add_argument("--n_samples", type=number(int, ge=0), default=0, help="samples per prompt for the curve (default max n)")
    parser.add_argument("--prompts", default=None, help="prompts JSONL (default: the lab's held-out split)")
    parser.add_argument("--n_per_family", type=number(int, ge=1), default=20, help="default prompts: how many per family")
    parser.add_argument("--temperature", type=number(float, gt=0), default=0.7, help="sampling temperature (PPO's default)")
    parser.add_argument("--max_new_tokens", type=number(int, ge=1), default=32)
    parser.add_argument("--batch_size", type=number(int, ge=1), default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=number(int, ge=0), default=0, help="print this many chosen responses (largest n)")
    parser.add_argument("--json", default=None, help="write the curve here")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        ns = sorted({int(x) for x in args.n.split(",")})
    except ValueError:
        parser.error(f"--n: expected integers separated by commas, got {args.n!r}")
    if ns[0] < 1:
        parser.error("--n: every n must be at least 1")
    N = args.n_samples or ns[-1]
    if N < ns[-1]:
        parser.error(f"--n_samples {N} is smaller than the largest n ({ns[-1]})")

    from minirlhf.checkpoint import load_model
    from minirlhf.data import PROMPT_FIELDS, read_jsonl
    from minirlhf.lab.world import eval_tasks
    from minirlhf.training import set_cpu_threads
    set_cpu_threads(0)  # the lab's models are tiny (see set_cpu_threads)
    prompts = ([r["prompt"] for r in read_jsonl(args.prompts, PROMPT_FIELDS)] if args.prompts
               else [t.prompt for t in eval_tasks(args.seed, args.n_per_family)])
    model, tok, _ = load_model(args.ckpt, expect="gpt", device=args.device)
    scorer = load_scorer(args.rm, args.device)
    groups = sample_groups(model, tok, prompts, N, temperature=args.temperature,
                           max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed)
    proxy = score_groups(scorer, groups)
    rows = bon_curve(groups, proxy, ns)
    print(f"best-of-n on {len(prompts)} prompts, {N} samples each at temperature {args.temperature}, "
          f"scorer {args.rm}")
    print(f"{'n':>5} {'gold':>8} {'proxy':>8} {'KL analytic':>12} {'KL measured':>12}")
    for r in rows:
        print(f"{r['n']:>5} {r['gold']:>8.3f} {r['proxy']:>8.3f} {r['kl_analytic']:>12.3f} {r['kl_measured']:>12.3f}")
    for g, p in list(zip(groups, proxy))[: args.show]:
        best = g[max(range(ns[-1]), key=p.__getitem__)]
        print(f"  {best.prompt!r} -> {best.text!r}  gold {gold(best.prompt, best.text, best.ended).score:+.2f}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"ckpt": args.ckpt, "scorer": args.rm, "n_samples": N, "temperature": args.temperature,
                       "n_prompts": len(prompts), "seed": args.seed, "curve": rows}, f, indent=2)


if __name__ == "__main__":
    main()
