"""The statistics an RL iteration logs, for PPO (train_ppo.py) and its critic-free sibling (train_rloo.py) alike.

    objective/*   the rollouts' reward-model score, the score optimised (no_eos_score for a response cut off by
                  max_new_tokens), the sequence KL estimate, the reward score - kl_coef * KL, and kl_coef itself
    policy/*      the update: the loss(es), approx_kl (k2 estimator), clipfrac, entropy, ratio
    value/*       PPO's value model: its loss, and the returns' variance it explains
    rollout/*     the fraction of responses that ended with end-of-text, and their length in tokens

Each metric is defined in the README's metrics section. Means are over the batch's rollouts or valid tokens,
averaged over DDP ranks.
"""

from minirlhf.training import all_reduce_mean


def micro_batch_stats(losses, n_valid, logratio, ratio, entropy, mk, clip_range):
    """The update's statistics on one micro-batch, each a mean over its own n_mk valid tokens. The losses ({name:
    loss}) were sums divided by the minibatch's n_valid (so the accumulated gradient is the minibatch mean)."""
    n_mk = mk.sum().item()
    # approx-KL from the rollout policy by the k2 estimator 0.5 (log r)^2 (Schulman, "Approximating KL divergence"):
    # >= 0 on every token, unlike k1 = -log r; biased, but close to KL for nearby policies.
    per_token = {"approx_kl": 0.5 * logratio ** 2, "clipfrac": ((ratio - 1).abs() > clip_range).float(),
                 "entropy": entropy, "ratio": ratio}
    stats = {f"policy/{k}": (x * mk).sum().item() / n_mk for k, x in per_token.items()}
    return {**stats, **{name: loss.item() * n_valid / n_mk for name, loss in losses.items()}}


def rollout_metrics(raw_scores, scores, kl, kl_coef, response_mask, ended, rt, returns=None, values=None):
    """objective/*, rollout/* (and value/explained_var, given returns and values) of one batch, averaged over ranks."""
    def mean(x):
        return all_reduce_mean(x.float().mean().item(), rt)
    seq_kl = kl.sum(1)  # (B,) the sequence KL estimate
    out = {"objective/rm_score": mean(raw_scores), "objective/score": mean(scores), "objective/kl": mean(seq_kl),
           "objective/reward": mean(scores - kl_coef * seq_kl), "objective/kl_coef": kl_coef,
           "rollout/eos_rate": mean(ended), "rollout/response_len": mean(response_mask.sum(1))}
    if values is not None:  # how much of the returns' variance the value model explains, over valid tokens
        r, v = returns[response_mask], values[response_mask]
        out["value/explained_var"] = all_reduce_mean((1 - (r - v).var() / r.var().clamp(min=1e-8)).item(), rt)
    return out
