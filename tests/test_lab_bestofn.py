"""Best-of-n's math (minirlhf/lab/bestofn.py) against independent references:

- the exact best-of-n distribution of a small discrete distribution against brute-force enumeration of every
  n-tuple of draws (with and without ties between atoms);
- the analytic KL log n - (n - 1) / n against the exact KL of a distribution with many tiny atoms and distinct
  scores (the continuous limit), and, with ties (a heavy best atom), the exact KL below it, equal to the
  two-atom closed form;
- the unbiased best-of-n estimate from N samples against the average over every n-subset (a float64 loop, ties
  among the top scores broken uniformly), with distinct scores, ties, and unfinished responses at one fixed
  score; and that tied samples share their weight, so the estimate does not depend on the samples' order.

    python -m pytest tests/test_lab_bestofn.py -q
"""

import itertools
import math
import random
import statistics

import pytest

from minirlhf.lab.bestofn import analytic_kl, bon_distribution, bon_weights, empirical_kl, kl_divergence


def brute_force_bon(probs, scores, n):
    """Every n-tuple of atoms with its probability; the winner is a uniformly random one of the top-scored draws."""
    out = [0.0] * len(probs)
    for draws in itertools.product(range(len(probs)), repeat=n):
        p = math.prod(probs[i] for i in draws)
        top = max(scores[i] for i in draws)
        winners = [i for i in draws if scores[i] == top]
        for i in winners:
            out[i] += p / len(winners)
    return out


@pytest.mark.parametrize("scores", [[0.3, -1.0, 2.0, 0.7], [0.3, 2.0, 2.0, 0.3]])  # distinct; two ties
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_exact_distribution_matches_enumeration(scores, n):
    probs = [0.1, 0.4, 0.2, 0.3]
    exact = bon_distribution(probs, scores, n)
    assert exact == pytest.approx(brute_force_bon(probs, scores, n), abs=1e-12)
    assert sum(exact) == pytest.approx(1.0)


@pytest.mark.parametrize("n", [1, 2, 4, 16, 64])
def test_analytic_kl_is_the_continuous_limit(n):
    rng = random.Random(n)
    M = 20000
    probs = [rng.random() + 0.5 for _ in range(M)]  # uneven but tiny atoms
    scores = [rng.random() for _ in range(M)]  # distinct: no ties
    total = sum(probs)
    kl = kl_divergence(bon_distribution(probs, scores, n), [p / total for p in probs])
    assert kl == pytest.approx(math.log(n) - (n - 1) / n, abs=2e-3)
    assert analytic_kl(n) == pytest.approx(math.log(n) - (n - 1) / n)


@pytest.mark.parametrize("n", [2, 4, 16, 64])
def test_ties_lower_the_kl(n):
    # two atoms: the best (mass q) wins with probability 1 - (1 - q)^n; the KL is written out by hand
    q = 0.3
    win = 1 - (1 - q) ** n
    closed_form = win * math.log(win / q) + (1 - win) * math.log((1 - win) / (1 - q))
    kl = kl_divergence(bon_distribution([1 - q, q], [0.0, 1.0], n), [1 - q, q])
    assert kl == pytest.approx(closed_form, rel=1e-9)
    assert kl < analytic_kl(n) and kl < math.log(1 / q)  # saturates at log(1/q) while the formula grows
    # the same world seen as samples: 7 of "a" (score 0) and 3 of "b" (score 1, float noise between copies)
    responses = ["a"] * 7 + ["b"] * 3
    scores = [0.0] * 7 + [1.0, 1.0 + 1e-7, 1.0 - 1e-7]
    assert empirical_kl(responses, scores, n) == pytest.approx(closed_form, rel=1e-6)


def test_one_response_has_no_kl():
    assert empirical_kl(["same"] * 5, [0.2] * 5, 4) == pytest.approx(0.0)


def brute_force_best_of_subsets(scores, values, n):
    """E[value of the best of a random n-subset], ties between the top scores broken uniformly: a plain loop over
    every n-subset in float64, each subset's tied winners sharing its weight equally."""
    subsets = list(itertools.combinations(range(len(scores)), n))
    total = 0.0
    for subset in subsets:
        top = max(scores[i] for i in subset)
        winners = [i for i in subset if scores[i] == top]
        total += sum(values[i] for i in winners) / len(winners)
    return total / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("case", ["distinct", "ties", "all tied", "unfinished at the fixed score"])
def test_unbiased_estimate_is_the_mean_over_subsets(n, case):
    rng = random.Random(n)
    N = 7
    scores = {"distinct": [rng.random() for _ in range(N)],
              "ties": [rng.choice([0.1, 0.5, 0.9]) for _ in range(N)],
              "all tied": [0.3] * N,
              "unfinished at the fixed score": [-3.0, 0.4, -3.0, -3.0, 1.2, 0.4, -3.0]}[case]
    values = [rng.random() for _ in range(N)]
    weights = bon_weights(scores, n)
    assert sum(weights) == pytest.approx(1.0, abs=1e-12)
    estimate = sum(w * v for w, v in zip(weights, values))
    assert estimate == pytest.approx(brute_force_best_of_subsets(scores, values, n), abs=1e-12)
    with pytest.raises(ValueError, match="needs 1 <= n"):
        bon_weights(scores, N + 1)


def test_ties_share_weight_so_the_sample_order_does_not_matter():
    """Breaking ties by position gives the same mean over sample orders, but each order its own estimate; the
    shared weights give that mean for every order (less variance, same expectation)."""
    scores = [-3.0, 0.4, -3.0, -3.0, 1.2, 0.4, -3.0, -3.0]
    values = [0.9, -0.2, 0.1, -1.0, 0.5, 0.7, 0.3, -0.6]
    n = 3

    def by_position(order):  # the best of each n-subset: highest score, the earliest in `order` among ties
        pos = {i: k for k, i in enumerate(order)}
        subsets = list(itertools.combinations(range(len(scores)), n))
        return sum(values[max(s, key=lambda i: (scores[i], -pos[i]))] for s in subsets) / len(subsets)

    rng = random.Random(0)
    orders = [rng.sample(range(len(scores)), len(scores)) for _ in range(400)]
    positional = [by_position(o) for o in orders]
    shared = []
    for o in orders:  # the same samples, listed in another order
        w = bon_weights([scores[i] for i in o], n)
        shared.append(sum(wk * values[i] for wk, i in zip(w, o)))
    assert max(shared) - min(shared) < 1e-12  # one estimate, whatever the order
    assert statistics.pvariance(positional) > 1e-3  # the positional rule's estimate moves with the order
    assert statistics.fmean(positional) == pytest.approx(shared[0], abs=0.02)  # around the same mean
