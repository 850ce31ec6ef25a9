"""Against over-optimisation: ensembles, RLOO / GRPO, early warning.

    python -m pytest tests/test_antioveropt.py -q

Checks the ensemble aggregations (mean, min, mean - lambda * variance) against hand values; RLOO and GRPO
advantages against a plain Python loop over groups; the firing rule against hand-made series; that
train_rloo.py refuses a bad flag (or a batch that does not split into groups) by name; and, on a tiny lab (two
reward models of different seeds, and a held-out one), that train_rloo.py runs end to end for both advantages
with an ensemble (ratio 1 on the first minibatch, every metric finite, the monitor signals logged), and that --early_stop stops a run built to over-optimise and stays quiet on one that cannot move.
"""

import math

import pytest
import torch

import train_ppo
import train_rloo
from bench.ensembles_analysis import EnsembleScorer
from minirlhf.ensemble import RewardEnsemble, aggregate, load_reward_model
from minirlhf.monitor import EarlyStop, first_firing
from minirlhf.tokenizer import get_tokenizer
from minirlhf.training import parse_args
from tests.test_pipeline import lab, ppo_flags, read_log  # noqa: F401  (the tiny lab fixture)


def test_aggregations_against_hand_values():
    s = torch.tensor([[1.0, -2.0], [3.0, 0.0], [2.0, 1.0]])  # 3 members x 2 responses
    # response 0: scores 1, 3, 2 -> mean 2, min 1, population variance ((1 + 1 + 0) / 3) = 2/3
    # response 1: scores -2, 0, 1 -> mean -1/3, min -2, variance ((25 + 1 + 16) / 9) / 3 = 14/9
    assert aggregate(s, "mean").tolist() == pytest.approx([2.0, -1 / 3])
    assert aggregate(s, "min").tolist() == [1.0, -2.0]
    assert aggregate(s, "uwo", 0.5).tolist() == pytest.approx([2 - 0.5 * 2 / 3, -1 / 3 - 0.5 * 14 / 9])
    with pytest.raises(ValueError, match="--rm_aggregate"):
        aggregate(s, "median")


def test_ensemble_is_called_like_a_reward_model():
    class Const(torch.nn.Module):  # a "reward model" scoring every position c
        def __init__(self, c):
            super().__init__()
            self.c = torch.nn.Parameter(torch.tensor(c))

        def forward(self, idx, attention_mask=None, start=0):
            return self.c.expand(idx.size(0), idx.size(1) - start)

    ens = RewardEnsemble([Const(1.0), Const(4.0)], "min")
    out = ens(torch.zeros(3, 5, dtype=torch.long), torch.ones(3, 5), start=2)
    assert out.shape == (3, 3) and (out == 1.0).all()


def test_rloo_and_grpo_advantages_against_a_loop():
    g = torch.Generator().manual_seed(0)
    k, rewards = 4, torch.randn(12, generator=g, dtype=torch.float64)
    rloo, grpo = train_rloo.rloo_advantages(rewards, k), train_rloo.grpo_advantages(rewards, k)
    r = rewards.tolist()
    for i in range(len(r)):
        group = r[i // k * k: i // k * k + k]
        others = [x for j, x in enumerate(group) if j != i % k]
        assert rloo[i].item() == pytest.approx(r[i] - sum(others) / (k - 1), abs=1e-12)
        mean = sum(group) / k
        std = math.sqrt(sum((x - mean) ** 2 for x in group) / (k - 1))
        assert grpo[i].item() == pytest.approx((r[i] - mean) / (std + 1e-4), abs=1e-12)


def test_firing_rule_on_hand_series():
    flat = [1.0, 1.1, 0.9, 1.0, 1.1, 0.9, 1.0, 1.1, 0.9, 1.0]  # baseline: mean 1.0, std sqrt(0.06 / 9)
    assert first_firing(flat + [1.0] * 10, 3.0) is None
    # needs 3 in a row (14, 15, 16), and fires at the third: where --early_stop can first know it
    assert first_firing(flat + [1.0, 2.0, 2.0, 1.0, 2.0, 2.0, 2.0], 3.0) == 16
    assert first_firing(flat + [0.0] * 3, 3.0, direction=-1) == 12  # a falling signal
    assert first_firing(flat + [0.0] * 3, 3.0, direction=1) is None
    assert first_firing(flat + [0.0, 2.0, 0.0], 3.0, direction=0) == 12  # either way (response length)
    assert first_firing(flat + [2.0] * 2, 3.0) is None  # too short to have fired
    with pytest.raises(ValueError, match="--early_stop"):
        EarlyStop("monitor/nothing:3")
    with pytest.raises(ValueError, match="THRESHOLD"):
        EarlyStop("objective/kl:high")


@pytest.mark.parametrize("argv,world_size,flags", [
    (["--group_size", "1"], 1, ["--group_size"]),  # one sample has no others to be judged against
    (["--advantage", "ppo"], 1, ["--advantage"]),
    (["--batch_size", "6", "--num_minibatches", "1", "--group_size", "4"], 1, ["--batch_size", "--group_size"]),
    (["--batch_size", "8", "--num_minibatches", "1", "--group_size", "8"], 2, ["--batch_size", "--group_size"]),
])
def test_rloo_refuses_a_bad_flag_by_name(argv, world_size, flags, capsys, monkeypatch, tmp_path):
    """Ranges, and the groups within each rank's share of the batch (8 splits into one group, not over 2 ranks)."""
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    with pytest.raises(SystemExit) as e:
        parse_args(train_rloo.Args, argv + ["--out_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and all(f in err for f in flags), err
    monkeypatch.setenv("WORLD_SIZE", "1")
    if world_size > 1:  # the same flags on one rank are fine
        assert parse_args(train_rloo.Args, argv + ["--out_dir", str(tmp_path / "out")]).group_size == 8


def rloo_flags(lab, out, advantage, rm):
    flags = ppo_flags(lab, out)
    flags[flags.index("--rm_ckpt") + 1] = rm
    return flags + ["--advantage", advantage, "--group_size", "2", "--rm_aggregate", "uwo",
                    "--monitor_rm_ckpt", f"{lab}/rm_b/ckpt.pt"]


@pytest.fixture(scope="module")
def ensemble_lab(lab):
    """The tiny lab plus a second reward model (another seed, same pairs)."""
    import train_rm
    train_rm.main(parse_args(train_rm.Args, [
        "--train_data", f"{lab}/prefs.jsonl", "--sft_ckpt", f"{lab}/sft/ckpt.pt", "--out_dir", f"{lab}/rm_b",
        "--batch_size", "8", "--max_steps", "4", "--eval_fraction", "0.25", "--norm_samples", "16",
        "--max_new_tokens", "12", "--seed", "7"]))
    return lab


@pytest.mark.parametrize("advantage", ["rloo", "grpo"])
def test_rloo_and_grpo_run_end_to_end(ensemble_lab, tmp_path, advantage):
    rm = f"{ensemble_lab}/rm/ckpt.pt,{ensemble_lab}/rm_b/ckpt.pt"
    train_rloo.main(parse_args(train_rloo.Args, rloo_flags(ensemble_lab, str(tmp_path), advantage, rm)))
    log = read_log(tmp_path / "log.jsonl")
    assert [row["step"] for row in log] == [1, 2, 3, 4]
    for row in log:
        assert row["policy/first_ratio_error"] < 1e-5
        for key in ("objective/rm_score", "objective/kl", "objective/kl_exact", "policy/kl_loss", "lab/gold",
                    "monitor/disagreement", "monitor/rm_gap", "monitor/above_train_max"):
            assert math.isfinite(row[key]), key
        assert row["monitor/disagreement"] > 0  # two members of different seeds never agree exactly
    # GRPO's k3 KL loss is >= 0 (and 0 while the policy is the reference); RLOO has none, its KL is in the reward
    assert all(row["policy/kl_loss"] >= 0 if advantage == "grpo" else row["policy/kl_loss"] == 0 for row in log)
    model, _, ckpts = load_reward_model(rm, "min")
    assert all("1.0" in c["train_score_quantiles"] for c in ckpts)  # train_rm stores the training-score maximum
    scores = EnsembleScorer(model, get_tokenizer("lab")).score("What is 2 + 3?", ["5", "5", "7"], [True, False, True])
    assert scores[1] == -3.0 and scores[0] != scores[2]  # no end-of-text: the fixed score, as in PPO


def test_early_stop_fires_when_the_policy_runs_and_not_when_it_cannot_move(lab, tmp_path):
    """kl_coef 0 and a learning rate 100x the default drive the policy away, step by step; lr 0 keeps it the SFT model
    (its KL to SFT is exactly 0), so objective/kl never leaves its baseline."""
    def run(out, lr):
        flags = ppo_flags(lab, str(out)) + ["--num_iters", "24", "--lr", str(lr), "--kl_coef", "0",
                                            "--early_stop", "objective/kl:2", "--eval_interval", "100"]
        train_ppo.main(parse_args(train_ppo.Args, flags))
        return len(read_log(out / "log.jsonl"))
    assert run(tmp_path / "hacking", 3e-3) < 24
    assert run(tmp_path / "calm", 0.0) == 24


def test_training_score_quantiles_over_each_distinct_response(lab):
    """train_rm stores quantiles of its scores on the training responses (the monitor's above_train_max reads the
    maximum). A sample is in every pair its prompt's samples form with it: each distinct response counts once. The
    reference scores each one alone, unpadded, and takes torch.quantile of those scores in float64."""
    from types import SimpleNamespace

    import train_rm
    from minirlhf.checkpoint import load_model
    from minirlhf.data import load_pairs
    from minirlhf.scoring import last_token_scores
    rm, tok, _ = load_model(f"{lab}/rm/ckpt.pt", expect="scalar")
    pairs, _ = load_pairs(f"{lab}/prefs.jsonl", tok, rm.config.block_size)
    pairs += [pair._replace(chosen=pair.rejected, rejected=pair.chosen) for pair in pairs[:10]]  # seen again
    responses = {tuple(side.tokens) for pair in pairs for side in (pair.chosen, pair.rejected)}
    assert len(responses) < 2 * len(pairs), "responses repeat across pairs: the case this checks"
    with torch.no_grad():
        alone = torch.tensor([last_token_scores(rm, torch.tensor([t]), torch.ones(1, len(t), dtype=torch.long)).item()
                              for t in responses], dtype=torch.float64)
    got = train_rm.training_score_quantiles(rm, pairs, SimpleNamespace(micro_batch_size=5), "cpu", tok.pad_token)
    assert sorted(got) == ["0.5", "0.9", "0.99", "1.0"]
    for q, value in got.items():
        assert value == pytest.approx(torch.quantile(alone, float(q)).item(), rel=1e-5, abs=1e-6), q
