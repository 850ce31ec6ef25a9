"""Stage 3 of RLHF: PPO against the reward model, with a per-token KL penalty to the SFT model.

    python train_ppo.py --prompts data/lab/prompts_train.jsonl --sft_ckpt out/sft/ckpt.pt --rm_ckpt out/rm/ckpt.pt
    torchrun --nproc_per_node=2 train_ppo.py ...
    python train_ppo.py --out_dir out/ppo --resume true
    python train_ppo.py ... --policy_ckpt out/ppo/ckpt.pt --rm_ckpt out/rm2/ckpt.pt --out_dir out/ppo2   # round 2

One iteration:
  1. rollout   sample a response per prompt from the policy at temperature T (no top-k / top-p), KV cache;
  2. score     in one no-grad pass: log-probs of the sampled tokens under the policy and the frozen SFT
               reference, values V(s_t) from the value model, the reward model's score at the last real token
               (a fixed score for a response that never emitted end-of-text); with --exact_kl, also the exact
               per-token KL to the reference over the whole vocabulary (kernels.full_kl), logged beside the
               sampled estimate and never used in the reward;
  3. rewards   r_t = -kl_coef * (log pi(a_t) - log pi_ref(a_t)) on every response token, plus the score on the
               last one; advantages by GAE (gamma = 1, lambda = 0.95), returns = advantages + values, then
               advantages whitened over valid tokens;
  4. update    ppo_epochs passes over the batch in shuffled minibatches (micro-batches accumulate gradients):
               clipped policy loss, clipped value loss, both averaged over the minibatch's valid tokens.

The details that decide whether it works, numbered as in the project's checklist "PPO for language models: the
details that decide whether it works", itself drawn from OpenAI's lm-human-preferences and Huang et al., "The N
Implementation Details of RLHF with PPO" and its TL;DR follow-up:
  1  one log-prob function (minirlhf.scoring.response_logprobs) for rollout, reference and update: on the first
     minibatch the ratio is 1 and approx-KL 0 (logged as policy/first_ratio_error; a test checks it);
  2  the logits are divided by the sampling temperature for policy (old and new) and reference;
  3  dropout off: every model stays in eval mode (it only switches dropout; there is no batch norm);
  4  a pad token distinct from end-of-text, prompts left-padded, positions from the attention mask;
  5  everything after the first end-of-text is masked out of log-probs, KL, values, advantages, whitening and
     loss means; a response with no end-of-text gets the fixed score no_eos_score;
  6  reward = per-token KL penalty + final score, kl_coef fixed or adaptive (Ziegler et al.);
  7  the reward model (Bradley-Terry, from the SFT model, read at the last real token, normalised so that SFT
     samples score mean 0, std 1) is train_rm.py's work; here it is read by scoring.last_token_scores, and a
     checkpoint that is not normalised gets a warning (no_eos_score and kl_coef would lose their scale);
  8  the value model starts from the reward model; clipped value loss;
  9  advantage whitening over valid tokens; ratio clipped at 1 +- clip_range;
 10  batch -> minibatches -> micro-batches, reshuffled every epoch; fp32 logsumexp; logits only for responses.

Simplifications: one response per prompt; separate AdamW optimizers for policy and value model (no shared
trunk); advantages are whitened over all ranks' tokens, other statistics are per-rank means averaged.
"""

import dataclasses
import math
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from minirlhf import kernels
from minirlhf.checkpoint import load_model
from minirlhf.data import PROMPT_FIELDS, encode_prompt, left_pad, read_jsonl
from minirlhf.ensemble import load_reward_model
from minirlhf.files import describe
from minirlhf.monitor import EarlyStop, hacking_signals
from minirlhf.scoring import last_token_scores, response_logprobs
from minirlhf.training import (
    Logger, adamw, all_reduce_mean, all_reduce_sum, check_finite, finish_distributed, load_resume, opt, parse_args,
    restore_training_state, resume_path, save_training_checkpoint, seed_everything, set_cpu_threads, setup_runtime,
    split_batch, step_generator)


@dataclass
class Args:
    prompts: str = opt("data/lab/prompts_train.jsonl", "prompts JSONL: {'prompt'} per line")
    eval_prompts: str = opt("data/lab/prompts_eval.jsonl", "held-out prompts for the periodic gold evaluation (lab prompts only; '' = none)")
    sft_ckpt: str = opt("out/sft/ckpt.pt", "SFT checkpoint: the frozen reference (and the initial policy)")
    policy_ckpt: str = opt("", "start the policy from this checkpoint instead, e.g. the last round's PPO policy "
                               "in iterated RLHF; the KL penalty still measures the distance to sft_ckpt")
    rm_ckpt: str = opt("out/rm/ckpt.pt", "reward model checkpoint (also the value model's initialisation); several "
                                         "comma-separated = an ensemble (minirlhf/ensemble.py), the value model from the first")
    rm_aggregate: str = opt("mean", "ensemble reward: 'mean', 'min' (worst case) or 'uwo' (mean - uwo_lambda * variance)",
                            choices=("mean", "min", "uwo"))
    uwo_lambda: float = opt(0.5, "rm_aggregate uwo: weight of the variance across members", ge=0)
    monitor_rm_ckpt: str = opt("", "a held-out reward model (other pairs or seed), only watched: monitor/rm_gap ('' = none)")
    early_stop: str = opt("", "SIGNAL:Z, stop once SIGNAL moves Z baseline stds the hacking way, e.g. "
                              "objective/kl:2, the best measured on the lab (minirlhf/monitor.py; '' = off)")
    out_dir: str = opt("out/ppo", "where ckpt.pt and log.jsonl go")
    num_iters: int = opt(60, "PPO iterations (rollout + update)", ge=1)
    batch_size: int = opt(64, "rollouts per iteration, over all ranks", ge=1)
    num_minibatches: int = opt(4, "minibatches per epoch (one optimizer step each)", ge=1)
    micro_batch_size: int = opt(16, "rollouts per forward/backward (gradient accumulation within a minibatch)", ge=1)
    ppo_epochs: int = opt(4, "passes over each batch", ge=1)
    max_prompt_len: int = opt(64, "prompts are cut from the left to this many tokens", ge=1)
    max_new_tokens: int = opt(32, "response length limit", ge=1)
    temperature: float = opt(0.7, "sampling temperature; log-probs use the same", gt=0)
    lr: float = opt(3e-5, "policy learning rate (AdamW, constant)", ge=0)
    value_lr: float = opt(1e-4, "value model learning rate", ge=0)
    kl_coef: float = opt(0.05, "beta: weight of the per-token KL penalty", ge=0)
    adaptive_kl: bool = opt(False, "adapt kl_coef toward target_kl (Ziegler et al. 2019)")
    target_kl: float = opt(2.0, "adaptive_kl: target sequence KL (nats)", gt=0)
    kl_horizon: int = opt(10000, "adaptive_kl: horizon in rollouts", ge=1)
    gamma: float = opt(1.0, "discount", ge=0, le=1)
    lam: float = opt(0.95, "GAE lambda", ge=0, le=1)
    clip_range: float = opt(0.2, "PPO ratio clip epsilon", gt=0)
    clip_range_value: float = opt(0.2, "value clip around the rollout values", gt=0)
    no_eos_score: float = opt(-3.0, "score for a response with no end-of-text (normalised reward units)")
    grad_clip: float = opt(1.0, "clip gradient norms to this (0 = off)", ge=0)
    eval_interval: int = opt(10, "iterations between held-out gold evaluations (lab prompts)", ge=1)
    ckpt_interval: int = opt(10, "iterations between checkpoints (one is always written at the end)", ge=1)
    log_samples: int = opt(2, "sample generations printed with each log line", ge=0)
    seed: int = opt(1337, "random seed")
    device: str = opt("auto", "'auto', 'cpu', 'cuda', 'cuda:1', ...")
    threads: int = opt(0, "CPU threads for torch (0 = 1 for a tiny model, else the free cores; see set_cpu_threads)", ge=0)
    dtype: str = opt("bfloat16", "autocast dtype on GPU ('bfloat16' or 'float32'); CPU always runs fp32", choices=("bfloat16", "float32"))
    fused_logprobs: bool = opt(False, "log-probs by the fused linear kernel, in rollout and update alike (less memory)")
    exact_kl: str = opt("auto", "log objective/kl_exact, the full-vocabulary KL to the reference (kernels.full_kl): "
                                "'true', 'false', or 'auto' = when the vocabulary is at most 8192 tokens (the lab's "
                                "1013: cheap; GPT-2's 50258: two more forwards and two (micro, R, V) logits)",
                       choices=("auto", "true", "false"))
    resume: bool = opt(False, "continue from out_dir/ckpt.pt (policy, value model, optimizers, iteration, RNG)")
    overwrite: bool = opt(False, "start afresh even if out_dir holds a run (its checkpoint and log are replaced)")
    wandb_project: str = opt("", "log to this wandb project ('' = off)")

    def check(self, world_size):
        """Checks between flags, before any work (parse_args runs it; each flag's own range is in its opt)."""
        split_batch(self.batch_size, self.micro_batch_size, world_size, self.num_minibatches)


# ----------------------------------------------------------------------------- the math


def gae(rewards, values, gamma, lam):
    """Generalised advantage estimation over the response tokens.

    rewards, values: (B, R), zero after each row's last real token (so nothing flows back from padding).
    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t);  A_t = delta_t + gamma * lam * A_{t+1};  V(s_R) = 0.
    """
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    R = rewards.size(1)
    for t in reversed(range(R)):
        next_value = values[:, t + 1] if t + 1 < R else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
    return advantages


def masked_whiten(x, mask, rt):
    """(x - mean) / std over the valid tokens of every rank; zeros elsewhere."""
    m = mask.float()
    n = all_reduce_sum(m.sum().item(), rt)
    mean = all_reduce_sum((x * m).sum().item(), rt) / n
    var = all_reduce_sum((((x - mean) * m) ** 2).sum().item(), rt) / max(n - 1, 1)
    return (x - mean) / math.sqrt(var + 1e-8) * m


@torch.no_grad()
def rollout_scores(policy, ref_policy, value_model, reward_model, tokens, mask, P, args):
    """The no-grad scoring pass, in micro-batches: (logprobs, ref_logprobs, values, raw_scores).

    Per-token tensors are (B, R) over the response columns tokens[:, P:], zero after each row's end."""
    out = [], [], [], []
    for i in range(0, tokens.size(0), args.micro_batch_size):
        t, m = tokens[i: i + args.micro_batch_size], mask[i: i + args.micro_batch_size]
        out[0].append(response_logprobs(policy, t, m, P, args.temperature, fused=args.fused_logprobs))
        out[1].append(response_logprobs(ref_policy, t, m, P, args.temperature, fused=args.fused_logprobs))
        out[2].append(value_model(t, m, start=P - 1)[:, :-1])  # V(s_t): the state just before response token t
        out[3].append(last_token_scores(reward_model, t, m, start=P - 1))  # the last real token is a response's
    logprobs, ref_logprobs, values, raw_scores = (torch.cat(x) for x in out)
    valid = mask[:, P:].float()
    return logprobs * valid, ref_logprobs * valid, values * valid, raw_scores


@torch.no_grad()
def exact_kl(policy, ref_policy, tokens, mask, P, args):
    """Exact per-token KL(pi || pi_ref) over the whole vocabulary at every response position: (B, R), for logging.

    The reward's KL term is the sampled estimate log pi(a_t) - log pi_ref(a_t) (k1: unbiased, but one token's
    worth of information, and negative on some tokens). Summed over the sampled response, this exact per-token
    KL has the same expectation, the sequence KL (the chain rule of KL), with less variance: logging both shows
    how noisy the estimate PPO trains on is. It costs a second forward of policy and reference and their (micro,
    R, V) logits, one micro-batch at a time; kernels.full_kl streams over the vocabulary (Triton on GPU).
    """
    out = []
    for i in range(0, tokens.size(0), args.micro_batch_size):
        t, m = tokens[i: i + args.micro_batch_size], mask[i: i + args.micro_batch_size]
        logits = policy(t, m, start=P - 1)[:, :-1]  # (b, R, V): the logits response_logprobs reads
        ref_logits = ref_policy(t, m, start=P - 1)[:, :-1]
        out.append(kernels.full_kl(logits, ref_logits, temperature=args.temperature))  # (b, R) fp32
    return torch.cat(out) * mask[:, P:].float()


def kl_penalised_rewards(logprobs, ref_logprobs, raw_scores, response, response_mask, eot, kl_coef, no_eos_score):
    """r_t = -kl_coef * (log pi - log pi_ref) on every valid token, plus the score on the last one.

    A response that never emitted end-of-text was cut off by the length limit: its reward-model score would
    judge an unfinished text, so it gets the fixed no_eos_score instead. Returns (rewards, kl, scores, ended).
    """
    ended = (response == eot).any(1)
    scores = torch.where(ended, raw_scores, torch.full_like(raw_scores, no_eos_score))
    kl = (logprobs - ref_logprobs) * response_mask  # per-token log-ratio: its sum estimates the sequence KL
    rewards = -kl_coef * kl
    last = response_mask.long().sum(1) - 1  # index of each row's last real response token
    rewards[torch.arange(rewards.size(0)), last] += scores
    return rewards, kl, scores, ended


def check_lab_prompt(row):
    """A prompt tagged with a lab family must be a lab prompt: the gold judge reads it (checked up front)."""
    if "family" in row:
        from minirlhf.lab.world import parse_prompt
        if parse_prompt(row["prompt"]) is None:
            raise ValueError(f"field 'prompt' is not a lab prompt, though tagged family {row['family']!r}: "
                             f"{describe(row['prompt'])}")


def main(args):
    rt = setup_runtime(args.device)
    seed_everything(args.seed + rt.rank)
    os.makedirs(args.out_dir, exist_ok=True)

    # ---- four models: policy and value are trained; reference and reward model are frozen. All in eval mode.
    policy, tok, _ = load_model(args.policy_ckpt or args.sft_ckpt, expect="gpt", device=rt.device)
    ref_policy, ref_tok, _ = load_model(args.sft_ckpt, expect="gpt", device=rt.device)
    if ref_tok.name != tok.name:
        raise ValueError(f"{args.policy_ckpt} uses tokenizer {tok.name!r} but {args.sft_ckpt} uses {ref_tok.name!r}")
    reward_model, rm_tok, rm_ckpts = load_reward_model(args.rm_ckpt, args.rm_aggregate, args.uwo_lambda, rt.device)
    value_model, _, _ = load_model(args.rm_ckpt.split(",")[0], expect="scalar", device=rt.device)
    monitor_rm = load_model(args.monitor_rm_ckpt, expect="scalar", device=rt.device)[0] if args.monitor_rm_ckpt else None
    early_stop = EarlyStop(args.early_stop)
    if rm_tok.name != tok.name:
        raise ValueError(f"SFT model uses tokenizer {tok.name!r} but the reward model uses {rm_tok.name!r}")
    if not all(c.get("normalised") for c in rm_ckpts):
        print(f"warning: {args.rm_ckpt} is not normalised on SFT samples; no_eos_score and kl_coef lose their scale")
    for frozen in (ref_policy, reward_model):
        frozen.requires_grad_(False)
    policy_opt, value_opt = adamw(policy, args.lr), adamw(value_model, args.value_lr)
    kl_coef, it = args.kl_coef, 0
    if args.resume:
        ckpt = load_resume(args.out_dir)
        policy.load_state_dict(ckpt["model"])
        value_model.load_state_dict(ckpt["value_model"])
        value_opt.load_state_dict(ckpt["value_optimizer"])
        it, kl_coef = restore_training_state(ckpt, policy_opt), ckpt["kl_coef"]
        if rt.master:
            print(f"resumed from {resume_path(args.out_dir)} at iteration {it}")
    policy_ddp = DDP(policy) if rt.world_size > 1 else policy
    value_ddp = DDP(value_model) if rt.world_size > 1 else value_model
    logger = Logger(args.out_dir, rt.master, args.wandb_project, dataclasses.asdict(args), resume=args.resume)

    # ---- prompts; lab prompts (with a "family" field) are also judged by the gold judge
    rows = read_jsonl(args.prompts, PROMPT_FIELDS, check=check_lab_prompt)
    encoded = [encode_prompt(tok, r["prompt"], args.max_prompt_len) for r in rows]
    prompts = [ids for ids, _ in encoded]
    longest = max(len(ids) for ids in prompts)
    if longest + args.max_new_tokens > policy.config.block_size:
        raise ValueError(f"prompts of up to {longest} tokens (--max_prompt_len {args.max_prompt_len}) + "
                         f"--max_new_tokens {args.max_new_tokens} > the policy's block_size {policy.config.block_size}")
    is_lab = all("family" in r for r in rows)
    eval_rows = read_jsonl(args.eval_prompts, PROMPT_FIELDS) if is_lab and args.eval_prompts else []
    log_exact_kl = args.exact_kl == "true" or (args.exact_kl == "auto" and policy.config.vocab_size <= 8192)
    threads = set_cpu_threads(policy.num_params(), args.threads)
    if rt.master:
        print(f"{len(prompts)} prompts ({sum(c for _, c in encoded)} cut from the left to {args.max_prompt_len} "
              f"tokens); policy {policy.num_params() / 1e6:.2f}M parameters on {rt.device} ({threads} CPU threads); world size {rt.world_size}")
    per_rank, mb_size, micro = split_batch(args.batch_size, args.micro_batch_size, rt.world_size, args.num_minibatches)

    while it < args.num_iters:
        # ---- 1. rollout
        t0 = time.time()
        pick = torch.randint(len(prompts), (per_rank,), generator=step_generator(args.seed, it, rt.rank, stream=1)).tolist()
        ids, prompt_mask = left_pad([prompts[i] for i in pick], tok.pad_token)
        tokens, mask = policy.generate(ids.to(rt.device), prompt_mask.to(rt.device), args.max_new_tokens,
                                       eos_token_id=tok.eot_token, pad_token_id=tok.pad_token,
                                       temperature=args.temperature,
                                       generator=step_generator(args.seed, it, rt.rank, rt.device))
        P = ids.size(1)
        response, response_mask = tokens[:, P:], mask[:, P:]  # (B, R); tokens after the end-of-text are masked
        t_generate = time.time() - t0

        # ---- 2. score
        t0 = time.time()
        with rt.autocast(args.dtype):
            logprobs, ref_logprobs, values, raw_scores = rollout_scores(
                policy, ref_policy, value_model, reward_model, tokens, mask, P, args)
            token_kl_exact = exact_kl(policy, ref_policy, tokens, mask, P, args) if log_exact_kl else None
        m = response_mask.float()
        t_score = time.time() - t0

        # ---- 3. rewards, advantages, returns
        with torch.no_grad():
            rewards, kl, scores, ended = kl_penalised_rewards(logprobs, ref_logprobs, raw_scores, response, m,
                                                              tok.eot_token, kl_coef, args.no_eos_score)
            advantages = gae(rewards, values, args.gamma, args.lam)
            returns = advantages + values  # before whitening
            advantages = masked_whiten(advantages, response_mask, rt)

        # ---- 4. PPO update: epochs x minibatches x micro-batches
        t0 = time.time()
        stats = {k: [] for k in ("pg_loss", "vf_loss", "approx_kl", "clipfrac", "entropy", "ratio")}
        first_ratio_error = None
        for epoch in range(args.ppo_epochs):
            order = torch.randperm(per_rank, generator=step_generator(args.seed + 1, it * args.ppo_epochs + epoch, rt.rank))
            for start in range(0, per_rank, mb_size):
                mb = order[start: start + mb_size]
                # the minibatch's valid tokens on all ranks: every loss is a mean over them. DDP averages the ranks'
                # gradients, so each rank divides by n_total / world_size (as train_sft.py does)
                n_valid = all_reduce_sum(m[mb].sum().item(), rt) / rt.world_size
                chunks = list(mb.split(micro))
                for k, idx in enumerate(chunks):
                    # Gradients accumulate over the minibatch's micro-batches and are all-reduced once, on the last
                    # one: DDP's no_sync() skips the all-reduce, and each DDP model needs its own. An ExitStack
                    # enters both (and the autocast) conditionally, as one with-block, and leaves them together.
                    with ExitStack() as stack:
                        if rt.world_size > 1 and k < len(chunks) - 1:
                            stack.enter_context(policy_ddp.no_sync())
                            stack.enter_context(value_ddp.no_sync())
                        stack.enter_context(rt.autocast(args.dtype))
                        mk = m[idx]
                        new_logprobs, entropy = response_logprobs(policy_ddp, tokens[idx], mask[idx], P,
                                                                  args.temperature, return_entropy=True,
                                                                  fused=args.fused_logprobs)
                        logratio = (new_logprobs - logprobs[idx]) * mk
                        ratio = torch.exp(logratio)
                        adv = advantages[idx]
                        pg_losses = torch.max(-adv * ratio, -adv * ratio.clamp(1 - args.clip_range, 1 + args.clip_range))
                        pg_loss = (pg_losses * mk).sum() / n_valid

                        new_values = value_ddp(tokens[idx], mask[idx], start=P - 1)[:, :-1]
                        v_clipped = values[idx] + (new_values - values[idx]).clamp(-args.clip_range_value, args.clip_range_value)
                        vf_losses = torch.max((new_values - returns[idx]) ** 2, (v_clipped - returns[idx]) ** 2)
                        vf_loss = 0.5 * (vf_losses * mk).sum() / n_valid
                        (pg_loss + vf_loss).backward()  # separate models: each loss reaches only its own

                    # Statistics per micro-batch, as means over its own valid tokens (n_mk of them). The losses were
                    # sums over the micro-batch divided by the minibatch's n_valid (so that the accumulated gradient is
                    # the minibatch mean); multiplying by n_valid / n_mk turns each back into its micro-batch's mean.
                    with torch.no_grad():
                        n_mk = mk.sum()
                        if first_ratio_error is None:
                            first_ratio_error = ((ratio - 1).abs() * mk).max().item()
                        stats["pg_loss"].append(pg_loss.item() * n_valid / n_mk.item())
                        stats["vf_loss"].append(vf_loss.item() * n_valid / n_mk.item())
                        # approx-KL between the rollout policy and the current one, by the k2 estimator
                        # 0.5 * (log r)^2 on the rollout's tokens (Schulman, "Approximating KL divergence"):
                        # >= 0 on every token, unlike k1 = -log r; biased, but close to KL for nearby policies.
                        stats["approx_kl"].append((0.5 * logratio ** 2 * mk).sum().item() / n_mk.item())
                        stats["clipfrac"].append((((ratio - 1).abs() > args.clip_range).float() * mk).sum().item() / n_mk.item())
                        stats["entropy"].append((entropy * mk).sum().item() / n_mk.item())
                        stats["ratio"].append((ratio * mk).sum().item() / n_mk.item())
                check_finite(stats["pg_loss"][-1] + stats["vf_loss"][-1], "PPO loss", it, args.out_dir)
                for model, optimizer in ((policy, policy_opt), (value_model, value_opt)):
                    torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip or float("inf"))
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
        t_update = time.time() - t0
        check_finite(policy, "policy weights", it, args.out_dir)  # before sampling from them

        # ---- statistics, adaptive KL, evaluation, checkpoint
        seq_kl = kl.sum(1)  # (B,) sequence KL estimate
        mean_kl = all_reduce_mean(seq_kl.mean().item(), rt)
        valid_returns, valid_values = returns[response_mask], values[response_mask]
        explained_var = 1 - (valid_returns - valid_values).var() / valid_returns.var().clamp(min=1e-8)
        metrics = {
            "objective/rm_score": all_reduce_mean(raw_scores.mean().item(), rt),
            "objective/score": all_reduce_mean(scores.mean().item(), rt),
            "objective/kl": mean_kl,
            "objective/reward": all_reduce_mean((scores - kl_coef * seq_kl).mean().item(), rt),
            "objective/kl_coef": kl_coef,
            **{f"policy/{k}": all_reduce_mean(sum(stats[k]) / len(stats[k]), rt)
               for k in ("approx_kl", "clipfrac", "entropy", "ratio")},
            "policy/loss": all_reduce_mean(sum(stats["pg_loss"]) / len(stats["pg_loss"]), rt),
            "policy/first_ratio_error": first_ratio_error,
            "value/loss": all_reduce_mean(sum(stats["vf_loss"]) / len(stats["vf_loss"]), rt),
            "value/explained_var": all_reduce_mean(explained_var.item(), rt),
            "rollout/eos_rate": all_reduce_mean(ended.float().mean().item(), rt),
            "rollout/response_len": all_reduce_mean(response_mask.float().sum(1).mean().item(), rt),
            "time/generate": t_generate, "time/score": t_score, "time/update": t_update,
        }
        if log_exact_kl:  # the same sequence KL, exactly per token along the sampled responses (see exact_kl)
            metrics["objective/kl_exact"] = all_reduce_mean(token_kl_exact.sum(1).mean().item(), rt)
        texts = [tok.decode(response[b][response_mask[b]].tolist()).removesuffix("<|endoftext|>") for b in range(per_rank)]
        if is_lab:  # the truth, which the policy never sees: gold score of this iteration's own rollouts
            from minirlhf.lab import gold
            golds = [gold(rows[i]["prompt"], text, ended=bool(e)).score for i, text, e in zip(pick, texts, ended)]
            metrics["lab/gold"] = all_reduce_mean(sum(golds) / len(golds), rt)
        metrics.update({k: all_reduce_mean(v, rt) for k, v in hacking_signals(  # early warning (minirlhf/monitor.py)
            reward_model, rm_ckpts, monitor_rm, tokens, mask, P, args.micro_batch_size, raw_scores).items()})
        if args.adaptive_kl:  # proportional controller: raise beta when KL is above target, lower it below
            error = max(-0.2, min(0.2, mean_kl / args.target_kl - 1))
            kl_coef *= 1 + error * args.batch_size / args.kl_horizon
        it += 1
        if eval_rows and rt.master and (it % args.eval_interval == 0 or it == args.num_iters):
            from minirlhf.lab.evaluate import evaluate_policy
            report = evaluate_policy(policy, tok, [r["prompt"] for r in eval_rows], temperature=args.temperature,
                                     max_new_tokens=args.max_new_tokens, seed=args.seed)
            metrics.update({f"eval/{k}": v for k, v in report.items() if isinstance(v, (int, float))})
        logger.log(it, metrics, ["objective/rm_score", "objective/kl", "objective/kl_exact", "lab/gold", "eval/gold",
                                 "policy/approx_kl",
                                 "policy/clipfrac", "value/explained_var", "rollout/eos_rate", "time/generate",
                                 "time/score", "time/update"])
        if rt.master and args.log_samples:
            for b in range(min(args.log_samples, per_rank)):
                print(f"    {describe(rows[pick[b]]['prompt'], 200)} -> {texts[b]!r}  (score {scores[b].item():+.2f})")
        stop = early_stop(metrics)
        if stop and rt.master:
            print(f"early stop at iteration {it}: {args.early_stop} fired")
        if it % args.ckpt_interval == 0 or it == args.num_iters or stop:
            save_training_checkpoint(rt, args.out_dir, policy, stage="ppo", tokenizer_name=tok.name, step=it,
                                     args=args, optimizer=policy_opt, kl_coef=kl_coef,
                                     value_model=value_model.state_dict(), value_optimizer=value_opt.state_dict())
        if stop:
            break
    del policy_ddp, value_ddp  # they hold the process group: released before the teardown
    finish_distributed(policy, rt)


if __name__ == "__main__":
    main(parse_args(Args))
