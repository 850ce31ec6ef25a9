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

WARM (Rame et al. 2024, "WARM: On the Benefits of Weight Averaged Reward Models") averages the members' weights
instead of their scores: one reward model, k times cheaper to run, and (the paper argues) more robust to label
noise, because averaging keeps what the members share and cancels what each memorised. It is meaningful only
for members fine-tuned from one initialisation (the same SFT model), which stay in one basin of the loss;
`warm_average` refuses members of different shapes or of a different recorded initialisation.
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


def weight_average(state_dicts):
    """[state dict] * k -> their element-wise mean, theta = (1/k) sum_i theta_i (accumulated in float64).

    Every member must hold the same tensors under the same names with the same shapes."""
    if not state_dicts:
        raise ValueError("weight_average: no members")
    first = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], start=1):
        if set(sd) != set(first):
            raise ValueError(f"weight_average: member {i} holds other tensors than member 0 "
                             f"({sorted(set(sd) ^ set(first))[:4]})")
        for name, t in sd.items():
            if t.shape != first[name].shape:
                raise ValueError(f"weight_average: {name} is {tuple(t.shape)} in member {i} but "
                                 f"{tuple(first[name].shape)} in member 0")
            if not t.is_floating_point() and not torch.equal(t, first[name]):
                raise ValueError(f"weight_average: {name} ({t.dtype}) differs between member {i} and member 0")
    return {name: (sum(sd[name].double() for sd in state_dicts) / len(state_dicts)).to(t.dtype)
            if t.is_floating_point() else t.clone() for name, t in first.items()}


def warm_average(ckpts, paths=None):
    """Reward-model checkpoints (dicts, as load_checkpoint reads them) -> the WARM state dict, their weight average.

    Refuses members that are not reward models, or differ from the first in architecture, tokenizer or
    initialisation (the run config's sft_ckpt and init_from): averaging models fine-tuned from different
    starting points averages unrelated coordinates. The average is not normalised: score SFT samples and fold
    the mean and std into the head again (train_rm.py's normalise_on_sft_samples), as for any new reward model."""
    paths = paths or [f"member {i}" for i in range(len(ckpts))]

    def identity(c):  # what must be equal across members
        config = c.get("config", {})
        return {"model_args": c["model_args"], "tokenizer": (c.get("tokenizer"), c.get("tokenizer_sha256")),
                "init": (config.get("sft_ckpt"), config.get("init_from"))}

    for path, c in zip(paths, ckpts):
        if c.get("model_type") != "scalar":
            raise ValueError(f"WARM: {path} is not a reward model (model_type {c.get('model_type')!r})")
        for field, value in identity(c).items():
            if value != identity(ckpts[0])[field]:
                raise ValueError(f"WARM: {path} has {field} {value!r} but {paths[0]} has {identity(ckpts[0])[field]!r}; "
                                 "only members fine-tuned from one initialisation can be averaged")
    return weight_average([c["model"] for c in ckpts])
