"""PPO's arithmetic against independent references: GAE against a plain Python loop, whitening over valid
tokens only, the no-end-of-text case (masked and penalised), padding invariance of rewards and values, and the
logged exact per-token KL against the formula written out in float64.

    python -m pytest tests/test_ppo_math.py -q
"""

import types

import torch

from minirlhf.model import GPT, GPTConfig, ScalarGPT
from minirlhf.training import Runtime
from minirlhf.scoring import exact_kl
from train_ppo import gae, kl_penalised_rewards, masked_whiten, rollout_scores

torch.manual_seed(0)
SINGLE = Runtime(rank=0, world_size=1, device="cpu", master=True)


def test_gae_matches_a_plain_loop():
    B, R, gamma, lam = 3, 7, 0.97, 0.9
    rewards, values = torch.randn(B, R, dtype=torch.float64), torch.randn(B, R, dtype=torch.float64)
    lengths = [7, 4, 1]
    for b, n in enumerate(lengths):  # zero after the end, as in training
        rewards[b, n:], values[b, n:] = 0, 0
    got = gae(rewards, values, gamma, lam)
    for b, n in enumerate(lengths):
        for t in range(n):  # A_t = sum_k (gamma lam)^k delta_{t+k}, over the row's own tokens only
            expected = 0.0
            for k in range(t, n):
                next_value = values[b, k + 1].item() if k + 1 < n else 0.0
                delta = rewards[b, k].item() + gamma * next_value - values[b, k].item()
                expected += (gamma * lam) ** (k - t) * delta
            assert abs(got[b, t].item() - expected) < 1e-12
        assert (got[b, n:] == 0).all()


def test_whitening_uses_valid_tokens_only():
    x = torch.randn(4, 6)
    mask = torch.rand(4, 6) > 0.4
    mask[0, 0] = True
    poisoned = x.masked_fill(~mask, 1e6)  # whatever sits in padding must not move the statistics
    w = masked_whiten(poisoned, mask, SINGLE)
    valid = x[mask]
    expected = (valid - valid.mean()) / valid.std()
    assert torch.allclose(w[mask], expected, atol=1e-5) and (w[~mask] == 0).all()


def test_no_eos_response_gets_fixed_score_and_everything_after_eos_is_masked():
    eot = 9
    response = torch.tensor([[3, 4, eot, 0, 0], [5, 6, 7, 8, 1]])  # row 0 ends at column 2; row 1 never ends
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).float()
    logprobs, ref_logprobs = -torch.rand(2, 5) * mask, -torch.rand(2, 5) * mask
    rewards, kl, scores, ended = kl_penalised_rewards(logprobs, ref_logprobs, torch.tensor([0.7, 2.5]),
                                                      response, mask, eot, kl_coef=0.1, no_eos_score=-3.0)
    assert ended.tolist() == [True, False] and torch.allclose(scores, torch.tensor([0.7, -3.0]))
    expected = -0.1 * (logprobs - ref_logprobs) * mask
    expected[0, 2] += 0.7  # the score lands on the end-of-text token ...
    expected[1, 4] += -3.0  # ... or on the last token of an unfinished response
    assert torch.allclose(rewards, expected) and (rewards[0, 3:] == 0).all() and (kl[0, 3:] == 0).all()


def test_rollout_scores_are_invariant_to_padding():
    """Left-padded prompts and right-padded (finished) responses score exactly as the same rows alone."""
    cfg = GPTConfig.preset("tiny", vocab_size=40, block_size=32)
    policy, ref = GPT(cfg).eval(), GPT(cfg).eval()
    value_model, reward_model = ScalarGPT(cfg).eval(), ScalarGPT(cfg).eval()
    args = types.SimpleNamespace(micro_batch_size=4, temperature=0.7, fused_logprobs=False)
    pad, P = 39, 5
    prompts = [[1, 2, 3, 4, 5], [6, 7]]
    responses = [[10, 11, 12, 13], [14, 15]]
    tokens = torch.full((2, P + 4), pad)
    mask = torch.zeros(2, P + 4, dtype=torch.long)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        tokens[b, P - len(p): P], mask[b, P - len(p): P] = torch.tensor(p), 1
        tokens[b, P: P + len(r)], mask[b, P: P + len(r)] = torch.tensor(r), 1
    batch = rollout_scores(policy, ref, value_model, reward_model, tokens, mask, P, args)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        alone_tokens = torch.tensor([p + r])
        alone = rollout_scores(policy, ref, value_model, reward_model, alone_tokens, torch.ones_like(alone_tokens),
                               len(p), args)
        for got, want in zip(batch[:3], alone[:3]):  # logprobs, ref_logprobs, values
            assert torch.allclose(got[b, : len(r)], want[0], atol=1e-5)
            assert (got[b, len(r):] == 0).all()
        assert torch.allclose(batch[3][b], alone[3][0], atol=1e-5)  # the score at the last real token


def test_exact_kl_is_the_full_vocabulary_sum_written_out():
    """exact_kl = sum_v p_v (log p_v - log q_v) at each response position, at the temperature; 0 after the end."""
    cfg = GPTConfig.preset("tiny", vocab_size=40, block_size=32)
    policy, ref = GPT(cfg).eval(), GPT(cfg).eval()
    P = 3
    tokens = torch.tensor([[39, 1, 2, 10, 11, 12], [3, 4, 5, 13, 14, 39]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    got = exact_kl(policy, ref, tokens, mask, P, temperature=0.7, micro_batch_size=1)
    with torch.no_grad():
        logp = torch.log_softmax(policy(tokens, mask).double() / 0.7, -1)[:, P - 1: -1]  # (B, R, V)
        logq = torch.log_softmax(ref(tokens, mask).double() / 0.7, -1)[:, P - 1: -1]
    want = (logp.exp() * (logp - logq)).sum(-1) * mask[:, P:]
    assert got.shape == (2, 3) and (got[1, 2] == 0) and (want > 0).sum() == 5
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
