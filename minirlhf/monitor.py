"""Early warning of reward hacking: signals that need no gold judge, and an opt-in early stop built on them.

Reward hacking shows in gold only (the proxy keeps rising), and a real run has no gold. These signals are
cheap to log every iteration from what PPO already has; the lab, which does have gold, measures how many
iterations before the gold peak each one fires and how often it fires on runs that do not over-optimise
(bench/bench_antioveropt.py). Logged as monitor/*, beside objective/kl, rollout/response_len, policy/entropy:

    monitor/disagreement     mean over responses of the std across ensemble members of their scores
                             (Coste et al. 2024; Eisenstein et al. 2023): members agree on the data, not off it
    monitor/heldout_score    mean score of a held-out reward model (other pairs, other seed; --monitor_rm_ckpt)
    monitor/rm_gap           mean (training RM score - held-out RM score): the policy exploits what only the
                             training RM believes (a held-out proxy; Gao et al. 2022 use gold the same way)
    monitor/above_train_max  fraction of responses the RM scores above every response it was trained on
                             (train_rm.py stores the quantiles): the policy has left the reward model's data,
                             a crude out-of-distribution test (InfoRM, Miao et al. 2024, does it in latent space)

Firing rule, one for every signal and for --early_stop: the first `baseline` iterations give a mean and std;
the signal fires once z = (x - mean) / std, times its direction (or |z| for a signal that may move either way),
has stayed above the threshold for `patience` iterations in a row: at the last of them, the first iteration
at which a run can know it (first_firing, which EarlyStop calls). The z-score makes one threshold mean the
same for every signal.

Measured on the lab (bench/bench_antioveropt.py, 3 seeds; 30 over-optimising runs of PPO with one reward model or
an ensemble, clean or flipped labels, RLOO and GRPO at kl_coef 0; 3 calm runs at kl_coef 0.2): no signal warned
reliably before the gold peak. The best early stop is objective/kl at z = 2 (`--early_stop objective/kl:2`): it
stopped 30/30 over-optimising runs, a median 6 iterations after the gold peak (20 late to 2 early; 1 of 30 at
or before the peak), and stopped 1 of the 3 calm runs; stopping there kept a mean gold of 0.60 against 0.20
without the stop (an oracle stopping at the gold maximum: 0.77). These are the iterations at which the stop
acts (bench/results/antioveropt_cpu.json, firings restated to that rule on 2026-12-06).
"""

import math

import torch

from minirlhf.checkpoint import load_model
from minirlhf.scoring import last_token_scores
from minirlhf.training import all_reduce_mean

# signal -> the direction it moves when the policy hacks the reward (+1 rises, -1 falls, 0 either way: real
# RLHF hacks lengthen responses and collapse entropy, but on the lab the hacks are short answers)
SIGNALS = {"objective/kl": 1, "objective/rm_score": 1, "rollout/response_len": 0, "policy/entropy": 0,
           "monitor/disagreement": 1, "monitor/heldout_score": -1, "monitor/rm_gap": 1,
           "monitor/above_train_max": 1}


@torch.no_grad()
def hacking_signals(reward_model, rm_ckpts, monitor_rm, tokens, mask, P, micro_batch_size, raw_scores):
    """monitor/* metrics for one batch of rollouts (tokens (B, T) = prompt + response, left-padded prompts).

    raw_scores (B,): the reward model's scores the scoring pass already read; a single reward model is not run
    again (an ensemble's members are: their spread is a signal)."""
    members, held_out = [], []
    models = getattr(reward_model, "members", None)  # an ensemble's members; None for one reward model
    for i in range(0, tokens.size(0), micro_batch_size):
        t, m = tokens[i: i + micro_batch_size], mask[i: i + micro_batch_size]
        if models is not None:
            members.append(torch.stack([last_token_scores(rm, t, m, start=P - 1) for rm in models]))  # (k, b)
        if monitor_rm is not None:
            held_out.append(last_token_scores(monitor_rm, t, m, start=P - 1))
    scores = torch.cat(members, 1) if models is not None else raw_scores[None]  # (k, B)
    out = {}
    if scores.size(0) > 1:
        out["monitor/disagreement"] = scores.std(0, unbiased=False).mean().item()
    maxima = [c.get("train_score_quantiles", {}).get("1.0") for c in rm_ckpts]
    if all(m is not None for m in maxima):
        out["monitor/above_train_max"] = (scores > torch.tensor(maxima)[:, None]).float().mean().item()
    if held_out:
        held_out = torch.cat(held_out)
        out["monitor/heldout_score"] = held_out.mean().item()
        out["monitor/rm_gap"] = (scores.mean(0) - held_out).mean().item()
    return out


def first_firing(values, threshold, direction=1, baseline=10, patience=3):
    """Index (0-based) of the iteration at which the signal fires, or None: see the module docstring.

    It fires at the last iteration of its first run of `patience`, the first at which the run is complete: where
    EarlyStop, fed the same values one iteration at a time, stops training (one rule for both)."""
    if len(values) < baseline + patience:
        return None
    base = values[:baseline]
    mean = sum(base) / baseline
    std = math.sqrt(sum((x - mean) ** 2 for x in base) / (baseline - 1))
    std = max(std, 1e-3 * max(1.0, abs(mean)))  # a flat baseline (e.g. 0 responses above the max) stays finite
    run = 0
    for i in range(baseline, len(values)):
        z = (values[i] - mean) / std
        run = run + 1 if (direction * z if direction else abs(z)) > threshold else 0
        if run == patience:
            return i
    return None


class EarlyStop:
    """--early_stop SIGNAL:THRESHOLD ('' = off): stop training once SIGNAL fires (first_firing) on the log so far."""

    def __init__(self, spec, baseline=10, patience=3):
        self.signal = None
        if not spec:
            return
        name, _, threshold = spec.rpartition(":")
        if name not in SIGNALS:
            raise ValueError(f"--early_stop {spec!r}: signal must be one of {', '.join(SIGNALS)}")
        try:
            self.threshold = float(threshold)
        except ValueError:
            raise ValueError(f"--early_stop {spec!r}: THRESHOLD {threshold!r} is not a number") from None
        self.signal, self.baseline, self.patience, self.values = name, baseline, patience, []

    def __call__(self, metrics):
        """Record this iteration's metrics; True when training should stop."""
        if self.signal is None:
            return False
        if self.signal not in metrics:
            raise ValueError(f"--early_stop: {self.signal} is not logged by this run (ensemble or --monitor_rm_ckpt missing?)")
        self.values.append(metrics[self.signal])
        fired = first_firing(self.values, self.threshold, SIGNALS[self.signal], self.baseline, self.patience)
        return fired is not None


class GoldAuditStop:
    """Stop on a small human spot check: people grade g of each iteration's rollouts with the gold judge (the truth
    a real run lacks; on the lab, gold scores), and training stops once audited gold has fallen from its best.

        audit = GoldAuditStop(window=4, z=3.0)
        if audit(labels):   # each iteration, the g gold scores of this iteration's audited rollouts
            stop

    The test is one-sided, of the audited mean against its running best: m_t is the mean of the labels of the
    last `window` iterations (window * g labels), best_t the largest m_u of an earlier window that does not
    overlap the current one (u <= t - window), s the standard deviation of every label so far, and the rule
    stops at the first t with

        best_t - m_t > z * s * sqrt(1 / n_t + 1 / n_best)       (n: labels in each window)

    z standard errors of the difference of two window means. The best of many earlier windows is biased up by
    noise, so this fires more often than one z-test would on a run whose gold never moves: choose z for a
    false-alarm rate over a whole run (bench/gold_audit.py calibrates it under that null, and measures the stop's
    lead and false alarms against the gold peak on PPO runs). min_sd keeps s positive while every label agrees.
    """

    def __init__(self, window=4, z=3.0, min_sd=0.05):
        if window < 1:
            raise ValueError(f"GoldAuditStop: window must be >= 1 iteration, got {window}")
        self.window, self.z, self.min_sd = window, z, min_sd
        self.sums, self.counts = [0.0], [0]  # prefix sums of the labels and their counts, per iteration
        self.total_sq, self.best, self.best_n = 0.0, -math.inf, 0
        self.statistic = None  # the last (best - current) / its standard error: the test stops when it exceeds z

    def _window(self, end):
        """(mean, count) of the labels of iterations end - window + 1 .. end (1-based)."""
        n = self.counts[end] - self.counts[end - self.window]
        return (self.sums[end] - self.sums[end - self.window]) / n, n

    def __call__(self, labels):
        """Record this iteration's audited gold scores (one per graded rollout); True when training should stop."""
        if not labels:
            raise ValueError("GoldAuditStop: each iteration needs at least one audited gold score")
        self.sums.append(self.sums[-1] + sum(labels))
        self.counts.append(self.counts[-1] + len(labels))
        self.total_sq += sum(x * x for x in labels)
        t, w = len(self.counts) - 1, self.window
        if t < 2 * w:
            return False
        mean_u, n_u = self._window(t - w)  # the earlier window that has just stopped overlapping the current one
        if mean_u > self.best:
            self.best, self.best_n = mean_u, n_u
        current, n = self._window(t)
        N, total = self.counts[t], self.sums[t]
        sd = math.sqrt(max(self.total_sq - total * total / N, 0.0) / max(N - 1, 1))
        self.statistic = (self.best - current) / (max(sd, self.min_sd) * math.sqrt(1 / n + 1 / self.best_n))
        return self.statistic > self.z


class Monitor:
    """The monitor as an RL loop uses it, in two lines: signals() each iteration, stop() after logging.

    rm_ckpts: the training reward model's checkpoints (one per ensemble member); monitor_rm_ckpt: a held-out
    reward model that is only watched ('' = none); early_stop: the --early_stop spec ('' = off).
    """

    def __init__(self, rm_ckpts, monitor_rm_ckpt="", early_stop="", device="cpu"):
        self.rm_ckpts, self.early_stop, self.spec = rm_ckpts, EarlyStop(early_stop), early_stop
        self.held_out = load_model(monitor_rm_ckpt, expect="scalar", device=device)[0] if monitor_rm_ckpt else None

    def signals(self, reward_model, tokens, mask, P, micro_batch_size, raw_scores, rt):
        """monitor/* for this iteration's rollouts, averaged over ranks (hacking_signals)."""
        signals = hacking_signals(reward_model, self.rm_ckpts, self.held_out, tokens, mask, P, micro_batch_size,
                                  raw_scores)
        return {k: all_reduce_mean(v, rt) for k, v in signals.items()}

    def stop(self, metrics, it, rt):
        """True once --early_stop fires on the metrics logged so far (this iteration's included)."""
        fired = self.early_stop(metrics)
        if fired and rt.master:
            print(f"early stop at iteration {it}: {self.spec} fired")
        return fired
