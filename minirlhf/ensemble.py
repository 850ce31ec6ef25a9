"""Reward-model ensembles against over-optimisation (Coste et al., ICLR 2024).

k reward models trained on the same pairs with different seeds (so different heads, data order and held-out
split) disagree most where the data said least, which is exactly where a policy optimising one of them goes
to find its mistakes. Three ways to turn k scores s_1..s_k of one response into the reward PPO optimises:

    mean   (1/k) sum_i s_i                    still over-optimises (the members share the data's blind spots)
    min    min_i s_i                          worst-case optimisation (WCO): conservative everywhere
    uwo    mean - lambda * var                uncertainty-weighted optimisation (UWO); var = (1/k) sum (s_i - mean)^2

Every member is normalised on SFT samples (mean 0, std 1; train_rm.py), so their scores share a scale and
lambda has the same meaning for every ensemble. `RewardEnsemble` has a ScalarGPT's call signature, so
train_ppo.py only changes how it loads the reward model:

    python train_ppo.py --rm_ckpt rm0/ckpt.pt,rm1/ckpt.pt,rm2/ckpt.pt,rm3/ckpt.pt --rm_aggregate uwo --uwo_lambda 0.5

Departures from the paper: Coste et al. use the population variance too, but their members differ only in
seed; ours also differ in which tenth of the pairs train_rm.py holds out for accuracy (it follows --seed).
"""

import torch
import torch.nn as nn

from minirlhf.checkpoint import load_model

AGGREGATES = ("mean", "min", "uwo")


def aggregate(member_scores, how="mean", uwo_lambda=0.5):
    """member_scores (k, ...) -> (...): the ensemble's reward, by `how` in AGGREGATES."""
    if how == "mean":
        return member_scores.mean(0)
    if how == "min":
        return member_scores.min(0).values
    if how == "uwo":
        return member_scores.mean(0) - uwo_lambda * member_scores.var(0, unbiased=False)
    raise ValueError(f"--rm_aggregate: {how!r} is not one of {', '.join(AGGREGATES)}")


class RewardEnsemble(nn.Module):
    """k ScalarGPT reward models behind one ScalarGPT-like call: forward(idx, mask, start) -> (B, T - start)."""

    def __init__(self, members, how="mean", uwo_lambda=0.5):
        super().__init__()
        aggregate(torch.zeros(1, 1), how, uwo_lambda)  # a bad `how` fails here, before any rollout
        self.members = nn.ModuleList(members)
        self.how, self.uwo_lambda = how, uwo_lambda

    def member_scores(self, idx, attention_mask=None, start=0):
        """(k, B, T - start): every member's score at every position from `start`."""
        return torch.stack([m(idx, attention_mask, start=start) for m in self.members])

    def forward(self, idx, attention_mask=None, start=0):
        return aggregate(self.member_scores(idx, attention_mask, start), self.how, self.uwo_lambda)


def load_reward_model(paths, how="mean", uwo_lambda=0.5, device="cpu"):
    """'rm.pt' -> (ScalarGPT, tokenizer, [ckpt]); 'a.pt,b.pt,...' -> (RewardEnsemble, tokenizer, [ckpt per member]).

    Members must share a tokenizer. One path ignores `how` (a single model is its own mean, min and uwo)."""
    members, tok, ckpts = [], None, []
    for path in paths.split(","):
        model, member_tok, ckpt = load_model(path, expect="scalar", device=device)
        if tok is not None and member_tok.name != tok.name:
            raise ValueError(f"--rm_ckpt: {path} uses tokenizer {member_tok.name!r} but the first member uses {tok.name!r}")
        members.append(model)
        tok = tok or member_tok
        ckpts.append(ckpt)
    if len(members) == 1:
        aggregate(torch.zeros(1, 1), how, uwo_lambda)  # still refuse a misspelt --rm_aggregate
        return members[0], tok, ckpts
    return RewardEnsemble(members, how, uwo_lambda).to(device).eval(), tok, ckpts


class EnsembleScorer:
    """A reward model or ensemble as a best-of-n scorer: score(prompt, responses, ended) -> [float].

    Scores are read as every lab stage reads them (lab.annotate.RewardModelLabeller, at the last real token);
    a response that never emitted end-of-text gets no_eos_score, as in PPO."""

    def __init__(self, reward_model, tok, no_eos_score=-3.0):
        from minirlhf.lab.annotate import RewardModelLabeller
        self.reader, self.no_eos_score = RewardModelLabeller(reward_model, tok), no_eos_score

    @torch.no_grad()
    def score(self, prompt, responses, ended):
        scores = self.reader.score(prompt, responses, ended)
        return [s if e else self.no_eos_score for s, e in zip(scores, ended)]
