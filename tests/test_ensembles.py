"""Ensembles that differ: WARM's weight average and the members' error statistics, each against a plain float64
loop; WARM's refusals (other shapes, tensors, initialisation); docs/ensembles.md equals its results file.

    python -m pytest tests/test_ensembles.py -q

Tiny random tensors only: no training, well under a second.
"""

import itertools
import math

import pytest
import torch

from bench.ensembles_analysis import error_statistics, gold_at
from minirlhf.ensemble import warm_average, weight_average


def random_state_dict(g):
    return {"wte.weight": torch.randn(5, 3, generator=g), "ln.bias": torch.randn(3, generator=g),
            "score.weight": torch.randn(1, 3, generator=g)}


def test_weight_average_against_a_float64_loop():
    g = torch.Generator().manual_seed(0)
    members = [random_state_dict(g) for _ in range(3)]
    avg = weight_average(members)
    for name, t in members[0].items():
        flat = [m[name].reshape(-1).tolist() for m in members]
        expected = [math.fsum(vals) / len(vals) for vals in zip(*flat)]
        assert avg[name].dtype == t.dtype and avg[name].shape == t.shape
        assert avg[name].reshape(-1).tolist() == pytest.approx(expected, abs=1e-6)


def test_weight_average_refuses_other_shapes_or_tensors():
    g = torch.Generator().manual_seed(1)
    a, b = random_state_dict(g), random_state_dict(g)
    with pytest.raises(ValueError, match="wte.weight is \\(5, 4\\) in member 1"):
        weight_average([a, {**b, "wte.weight": torch.zeros(5, 4)}])
    with pytest.raises(ValueError, match="other tensors"):
        weight_average([a, {k: v for k, v in b.items() if k != "ln.bias"}])


def ckpt(state_dict, sft="out/sft0/ckpt.pt", model_type="scalar"):
    return {"model_type": model_type, "model_args": {"n_layer": 1}, "tokenizer": "lab", "tokenizer_sha256": "x",
            "config": {"sft_ckpt": sft, "init_from": ""}, "model": state_dict}


def test_warm_averages_members_of_one_init_and_refuses_others():
    g = torch.Generator().manual_seed(2)
    a, b = random_state_dict(g), random_state_dict(g)
    avg = warm_average([ckpt(a), ckpt(b)])
    assert torch.allclose(avg["ln.bias"], (a["ln.bias"].double() + b["ln.bias"].double()).float() / 2)
    with pytest.raises(ValueError, match="init .* only members fine-tuned from one initialisation"):
        warm_average([ckpt(a), ckpt(b, sft="out/sft1/ckpt.pt")], ["rm_a", "rm_b"])
    with pytest.raises(ValueError, match="rm_b is not a reward model"):
        warm_average([ckpt(a), ckpt(b, model_type="gpt")], ["rm_a", "rm_b"])


def loop_pearson(x, y):
    mx, my = math.fsum(x) / len(x), math.fsum(y) / len(y)
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = math.fsum((a - mx) ** 2 for a in x), math.fsum((b - my) ** 2 for b in y)
    return 0.0 if sxx * syy == 0 else sxy / math.sqrt(sxx * syy)


def test_error_statistics_against_plain_loops():
    g = torch.Generator().manual_seed(3)
    k, P = 4, 200
    gold = torch.rand(P, generator=g) + 0.05  # gold margins of pairs whose better side is A: > 0
    shared = torch.randn(P, generator=g)  # an error every member makes: correlated members
    margins = 2 * gold + shared + 0.5 * torch.randn(k, P, generator=g)
    margins[0, :3] = 0.0  # a tie counts half a mistake
    stats = error_statistics(margins, gold)

    m, gl = margins.double().tolist(), gold.double().tolist()
    wrong = [[1.0 if x < 0 else 0.5 if x == 0 else 0.0 for x in row] for row in m]
    assert stats["member_accuracy"] == pytest.approx([1 - math.fsum(w) / P for w in wrong])
    slopes = [math.fsum(a * b for a, b in zip(row, gl)) / math.fsum(b * b for b in gl) for row in m]
    residual = [[a - s * b for a, b in zip(row, gl)] for row, s in zip(m, slopes)]
    pairs = list(itertools.combinations(range(k), 2))
    rho = math.fsum(loop_pearson(residual[i], residual[j]) for i, j in pairs) / len(pairs)
    phi = math.fsum(loop_pearson(wrong[i], wrong[j]) for i, j in pairs) / len(pairs)
    assert stats["error_corr"] == pytest.approx(rho, abs=1e-12)
    assert stats["mistake_corr"] == pytest.approx(phi, abs=1e-12)
    assert stats["error_variance_kept"] == pytest.approx((1 + (k - 1) * rho) / k)
    all_wrong = sum(all(wrong[i][p] == 1.0 for i in range(k)) for p in range(P)) / P
    assert stats["p_all_wrong"] == pytest.approx(all_wrong)
    assert stats["p_all_wrong_if_independent"] == pytest.approx(math.prod(math.fsum(w) / P for w in wrong))
    means = [math.fsum(m[i][p] for i in range(k)) / k for p in range(P)]
    assert stats["mean_accuracy"] == pytest.approx(1 - sum(1.0 if x < 0 else 0.5 if x == 0 else 0.0 for x in means) / P)
    assert 0.3 < rho < 1  # the shared error shows (a statistic that cannot fail would not)


def test_independent_members_have_no_error_correlation():
    g = torch.Generator().manual_seed(4)
    gold = torch.rand(4000, generator=g) + 0.05
    stats = error_statistics(gold + torch.randn(4, 4000, generator=g), gold)
    assert abs(stats["error_corr"]) < 0.05 and stats["error_variance_kept"] == pytest.approx(0.25, abs=0.04)


def test_gold_at_reads_the_first_crossing():
    curve = {"gold": [0.7, 0.8, 0.6, 0.5], "sqrt_kl": [0.1, 0.6, 1.1, 0.9]}
    assert gold_at(curve, 0.5) == 0.8 and gold_at(curve, 1.0) == 0.6 and gold_at(curve, 2.0) is None
