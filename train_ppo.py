"""Stage 3 of RLHF: PPO against the reward model, with a per-token KL penalty to the SFT model.

    python train_ppo.py --prompts data/lab/prompts_train.jsonl --sft_ckpt out/sft/ckpt.pt --rm_ckpt out/rm/ckpt.pt
    torchrun --nproc_per_node=2 train_ppo.py ...                  # DDP; --resume true continues a stopped run
    python train_ppo.py ... --policy_ckpt out/ppo/ckpt.pt --rm_ckpt out/rm2/ckpt.pt --out_dir out/ppo2   # round 2

One iteration:
  1. rollout   sample a response per prompt from the policy at temperature T (no top-k / top-p), KV cache;
  2. score     in one no-grad pass: log-probs of the sampled tokens under the policy and the frozen SFT reference,
               values V(s_t), the reward model's score at the last real token (fixed if no end-of-text);
  3. rewards   r_t = -kl_coef * (log pi(a_t) - log pi_ref(a_t)) on every response token, plus the score on the
               last one; advantages by GAE (gamma = 1, lambda = 0.95), returns = advantages + values, then
               advantages whitened over valid tokens;
  4. update    ppo_epochs passes over the batch in shuffled minibatches (micro-batches accumulate gradients):
               clipped policy loss, clipped value loss, both averaged over the minibatch's valid tokens.

The ten details that decide whether PPO works on language models are in docs/ppo_details.md, with the why of
each (after OpenAI's lm-human-preferences and Huang et al. 2024, "The N Implementation Details of RLHF with PPO");
each is marked where it happens: search for "[PPO detail 5]", say. What only watches (the lab's gold judge, the
monitor and --early_stop, the exact KL) enters the loop in a line, from the module of its topic.
Simplifications: one response per prompt; separate AdamW optimizers for policy and value model (no shared
trunk); advantages are whitened over all ranks' tokens, other statistics are per-rank means averaged.
With --lora_rank, four models on two trunks: the reference is the policy with its adapters off, the reward model
the value model's trunk with its adapters off (minirlhf/lora.py, docs/lora.md).
"""

import dataclasses
import math
import os
import time
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from minirlhf import lora
from minirlhf.checkpoint import load_model
from minirlhf.data import left_pad, read_prompts
from minirlhf.ensemble import load_reward_model
from minirlhf.lab.evaluate import RunJudge
from minirlhf.metrics import micro_batch_stats, rollout_metrics
from minirlhf.monitor import Monitor
from minirlhf.scoring import exact_kl, last_token_scores, response_logprobs
from minirlhf.training import (
    Logger, accumulation_context, adamw, all_reduce_mean, all_reduce_sum, check_finite, finish_distributed, opt,
    parse_args, resume_run, save_training_checkpoint, seed_everything, set_cpu_threads, setup_runtime, split_batch,
    step_generator)


@dataclass
class Args:
    # ---- what to train, from what
    prompts: str = opt("data/lab/prompts_train.jsonl", "prompts JSONL: {'prompt'} per line")
    sft_ckpt: str = opt("out/sft/ckpt.pt", "SFT checkpoint: the frozen reference (and the initial policy)")
    policy_ckpt: str = opt("", "start the policy here instead (iterated RLHF); the KL is still to sft_ckpt")
    rm_ckpt: str = opt("out/rm/ckpt.pt", "reward model, the value model's start; a,b,c = an ensemble (ensemble.py)")
    out_dir: str = opt("out/ppo", "where ckpt.pt and log.jsonl go")
    # ---- PPO
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
    seed: int = opt(1337, "random seed")
    # ---- the lab, the monitor, research extras
    eval_prompts: str = opt("data/lab/prompts_eval.jsonl", "held-out lab prompts for eval/* ('' = none)")
    eval_interval: int = opt(10, "iterations between held-out gold evaluations (lab prompts)", ge=1)
    rm_aggregate: str = opt("mean", "ensemble reward: mean, min or uwo", choices=("mean", "min", "uwo"))
    uwo_lambda: float = opt(0.5, "rm_aggregate uwo: weight of the variance across members", ge=0)
    monitor_rm_ckpt: str = opt("", "a held-out reward model, only watched: monitor/rm_gap ('' = none)")
    early_stop: str = opt("", "SIGNAL:Z, stop once SIGNAL moves Z stds the hacking way (monitor.py; '' = off)")
    exact_kl: str = opt("auto", "log objective/kl_exact; auto = if vocab <= 8192", choices=("auto", "true", "false"))
    log_samples: int = opt(2, "sample generations printed with each log line", ge=0)
    # ---- infrastructure
    ckpt_interval: int = opt(10, "iterations between checkpoints (one is always written at the end)", ge=1)
    device: str = opt("auto", "'auto', 'cpu', 'cuda', 'cuda:1', ...")
    threads: int = opt(0, "CPU threads for torch (0 = choose; see training.set_cpu_threads)", ge=0)
    dtype: str = opt("bfloat16", "autocast dtype on GPU; CPU always runs fp32", choices=("bfloat16", "float32"))
    fused_logprobs: bool = opt(False, "log-probs by the fused linear kernel, in rollout and update (less memory)")
    lora_rank: int = opt(0, "LoRA rank: train low-rank adapters on a frozen trunk (minirlhf/lora.py; 0 = off)", ge=0)
    lora_alpha: float = opt(16.0, "LoRA scale: the adapters' update is lora_alpha / lora_rank * B A", gt=0)
    lora_targets: str = opt("c_attn,c_proj,c_fc", "the blocks' Linear layers that get adapters (LoRA)")
    resume: bool = opt(False, "continue from out_dir/ckpt.pt (policy, value model, optimizers, iteration, RNG)")
    overwrite: bool = opt(False, "start afresh even if out_dir holds a run (its checkpoint and log are replaced)")
    wandb_project: str = opt("", "log to this wandb project ('' = off)")

    def check(self, world_size):
        """Checks between flags, before any work (parse_args runs it; each flag's own range is in its opt)."""
        split_batch(self.batch_size, self.micro_batch_size, world_size, self.num_minibatches)


# the metrics printed on each iteration's line (log.jsonl has them all; the README documents each)
LOG_LINE = ["objective/rm_score", "objective/kl", "objective/kl_exact", "lab/gold", "eval/gold", "policy/approx_kl",
            "policy/clipfrac", "value/explained_var", "rollout/eos_rate", "time/generate", "time/score", "time/update"]


# ----------------------------------------------------------------------------- the math


def gae(rewards, values, gamma, lam):
    """Generalised advantage estimation over the response tokens.  [PPO detail 8]

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
    """(x - mean) / std over the valid tokens of every rank; zeros elsewhere.  [PPO detail 9]"""
    m = mask.float()
    n = all_reduce_sum(m.sum().item(), rt)
    mean = all_reduce_sum((x * m).sum().item(), rt) / n
    var = all_reduce_sum((((x - mean) * m) ** 2).sum().item(), rt) / max(n - 1, 1)
    return (x - mean) / math.sqrt(var + 1e-8) * m


@torch.no_grad()
def rollout_scores(policy, ref_policy, value_model, reward_model, tokens, mask, P, args):
    """The no-grad scoring pass, in micro-batches: (logprobs, ref_logprobs, values, raw_scores); per-token tensors
    are (B, R) over the response columns tokens[:, P:], zero after each row's end. [PPO detail 1] The update reads
    its log-probs by the same function; [PPO detail 2] at the sampling temperature, for policy and reference."""
    out = [], [], [], []
    for i in range(0, tokens.size(0), args.micro_batch_size):
        t, m = tokens[i: i + args.micro_batch_size], mask[i: i + args.micro_batch_size]
        out[0].append(response_logprobs(policy, t, m, P, args.temperature, fused=args.fused_logprobs))
        out[1].append(response_logprobs(ref_policy, t, m, P, args.temperature, fused=args.fused_logprobs))
        out[2].append(value_model(t, m, start=P - 1)[:, :-1])  # V(s_t): the state just before response token t
        # [PPO detail 7] the reward model is read at each row's last real token, a response's
        out[3].append(last_token_scores(reward_model, t, m, start=P - 1))
    logprobs, ref_logprobs, values, raw_scores = (torch.cat(x) for x in out)
    valid = mask[:, P:].float()
    return logprobs * valid, ref_logprobs * valid, values * valid, raw_scores


def kl_penalised_rewards(logprobs, ref_logprobs, raw_scores, response, response_mask, eot, kl_coef, no_eos_score):
    """r_t = -kl_coef * (log pi - log pi_ref) on every valid token, plus the score on the last one.  [PPO detail 6]

    [PPO detail 5] A response with no end-of-text was cut off by the length limit: its reward-model score would
    judge an unfinished text, so it gets the fixed no_eos_score. Returns (rewards, kl, scores, ended)."""
    ended = (response == eot).any(1)
    scores = torch.where(ended, raw_scores, torch.full_like(raw_scores, no_eos_score))
    kl = (logprobs - ref_logprobs) * response_mask  # per-token log-ratio: its sum estimates the sequence KL
    rewards = -kl_coef * kl
    last = response_mask.long().sum(1) - 1  # index of each row's last real response token
    rewards[torch.arange(rewards.size(0)), last] += scores
    return rewards, kl, scores, ended


def load_models(args, device):
    """(policy, ref_policy, reward_model, value_model, tokenizer, RM checkpoints): policy and value model are trained,
    the others frozen. [PPO detail 3] Every model comes in eval mode and stays there: no dropout anywhere."""
    policy, tok, _ = load_model(args.policy_ckpt or args.sft_ckpt, expect="gpt", device=device)
    ref_policy, ref_tok, _ = (None, tok, None) if args.lora_rank else load_model(args.sft_ckpt, expect="gpt", device=device)
    reward_model, rm_tok, rm_ckpts = load_reward_model(args.rm_ckpt, args.rm_aggregate, args.uwo_lambda, device)
    # [PPO detail 8] the value model starts as the reward model (the first member of an ensemble)
    value_model = None if args.lora_rank else load_model(args.rm_ckpt.split(",")[0], expect="scalar", device=device)[0]
    if args.lora_rank:  # four models on two trunks: reference and reward model are views, adapters off (lora.py)
        policy, ref_policy = lora.rl_policy(policy, args)
        reward_model, value_model = lora.value_on_reward_trunk(reward_model, args)
    if not ref_tok.name == rm_tok.name == tok.name:
        raise ValueError(f"tokenizers differ: policy {tok.name!r}, SFT {ref_tok.name!r}, reward model {rm_tok.name!r}")
    if not all(c.get("normalised") for c in rm_ckpts):  # [PPO detail 7] SFT samples score mean 0, std 1
        print(f"warning: {args.rm_ckpt} is not normalised on SFT samples; no_eos_score and kl_coef lose their scale")
    for frozen in (ref_policy, reward_model):
        frozen.requires_grad_(False)
    return policy, ref_policy, reward_model, value_model, tok, rm_ckpts


def main(args):
    rt = setup_runtime(args.device)
    seed_everything(args.seed + rt.rank)  # [PPO detail 10] each rank samples differently
    os.makedirs(args.out_dir, exist_ok=True)

    policy, ref_policy, reward_model, value_model, tok, rm_ckpts = load_models(args, rt.device)
    monitor = Monitor(rm_ckpts, args.monitor_rm_ckpt, args.early_stop, rt.device)  # monitor/*, --early_stop
    policy_opt, value_opt = adamw(policy, args.lr), adamw(value_model, args.value_lr)
    kl_coef, it = args.kl_coef, 0
    if args.resume:
        ckpt = resume_run(rt, args.out_dir, policy, policy_opt, value_model=value_model, value_optimizer=value_opt)
        it, kl_coef = ckpt["step"], ckpt["kl_coef"]
    policy_ddp, value_ddp = (DDP(model) if rt.world_size > 1 else model for model in (policy, value_model))
    logger = Logger(args.out_dir, rt.master, args.wandb_project, dataclasses.asdict(args), resume=args.resume)

    # ---- prompts; lab prompts (with a "family" field) are also judged by the gold judge
    rows, prompts, n_cut = read_prompts(args.prompts, tok, args.max_prompt_len, args.max_new_tokens, policy.config.block_size)
    judge = RunJudge.for_run(rows, args)  # lab/gold and eval/*; None off the lab
    log_exact_kl = args.exact_kl == "true" or (args.exact_kl == "auto" and policy.config.vocab_size <= 8192)
    threads = set_cpu_threads(policy.num_params(), args.threads)
    if rt.master:
        print(f"{len(prompts)} prompts ({n_cut} cut to {args.max_prompt_len} tokens); policy {policy.num_params() / 1e6:.2f}M "
              f"parameters on {rt.device} ({threads} CPU threads); world size {rt.world_size}")
    per_rank, mb_size, micro_size = split_batch(args.batch_size, args.micro_batch_size, rt.world_size, args.num_minibatches)

    while it < args.num_iters:
        # ---- 1. rollout. [PPO detail 4] prompts left-padded with a pad token that is not end-of-text; the model
        # takes positions from the mask. [PPO detail 2] plain sampling at temperature T, no top-k / top-p.
        t0 = time.time()
        pick = torch.randint(len(prompts), (per_rank,), generator=step_generator(args.seed, it, rt.rank, stream=1)).tolist()
        ids, prompt_mask = left_pad([prompts[i] for i in pick], tok.pad_token)
        tokens, mask = policy.generate(ids.to(rt.device), prompt_mask.to(rt.device), args.max_new_tokens,
                                       eos_token_id=tok.eot_token, pad_token_id=tok.pad_token, temperature=args.temperature,
                                       generator=step_generator(args.seed, it, rt.rank, rt.device))
        P = ids.size(1)
        # [PPO detail 5] the mask ends at each response's first end-of-text: log-probs, KL, values, advantages,
        # whitening and every loss mean below read only the tokens before it (and it)
        response, response_mask = tokens[:, P:], mask[:, P:]  # (B, R)
        t_generate = time.time() - t0

        # ---- 2. score
        t0 = time.time()
        with rt.autocast(args.dtype):
            logprobs, ref_logprobs, values, raw_scores = rollout_scores(
                policy, ref_policy, value_model, reward_model, tokens, mask, P, args)
            token_kl_exact = (exact_kl(policy, ref_policy, tokens, mask, P, args.temperature, args.micro_batch_size)
                              if log_exact_kl else None)
        m = response_mask.float()
        t_score = time.time() - t0

        # ---- 3. rewards, advantages, returns
        with torch.no_grad():
            rewards, kl, scores, ended = kl_penalised_rewards(logprobs, ref_logprobs, raw_scores, response, m,
                                                              tok.eot_token, kl_coef, args.no_eos_score)
            advantages = gae(rewards, values, args.gamma, args.lam)
            returns = advantages + values  # [PPO detail 8] before whitening
            advantages = masked_whiten(advantages, response_mask, rt)  # [PPO detail 9]

        # ---- 4. PPO update. [PPO detail 10] epochs x minibatches (reshuffled every epoch) x micro-batches
        t0 = time.time()
        stats = []  # one dict per micro-batch (micro_batch_stats)
        for epoch in range(args.ppo_epochs):
            order = torch.randperm(per_rank, generator=step_generator(args.seed + 1, it * args.ppo_epochs + epoch, rt.rank))
            for mb_start in range(0, per_rank, mb_size):
                mb = order[mb_start: mb_start + mb_size]
                # the minibatch's valid tokens on all ranks: every loss is a mean over them. DDP averages the ranks'
                # gradients, so each rank divides by n_total / world_size (as train_sft.py does)
                n_valid = all_reduce_sum(m[mb].sum().item(), rt) / rt.world_size
                chunks = list(mb.split(micro_size))
                for k, idx in enumerate(chunks):
                    with accumulation_context(rt, (policy_ddp, value_ddp), k == len(chunks) - 1, args.dtype):
                        mk = m[idx]  # [PPO detail 1] below: the rollout's log-prob function, so the first ratio is 1
                        new_logprobs, entropy = response_logprobs(policy_ddp, tokens[idx], mask[idx], P,
                                                                  args.temperature, return_entropy=True, fused=args.fused_logprobs)
                        logratio = (new_logprobs - logprobs[idx]) * mk
                        ratio = torch.exp(logratio)
                        adv = advantages[idx]  # [PPO detail 9] below: the clipped surrogate
                        pg_losses = torch.max(-adv * ratio, -adv * ratio.clamp(1 - args.clip_range, 1 + args.clip_range))
                        pg_loss = (pg_losses * mk).sum() / n_valid
                        new_values = value_ddp(tokens[idx], mask[idx], start=P - 1)[:, :-1]  # [PPO detail 8] the value loss, clipped
                        v_clipped = values[idx] + (new_values - values[idx]).clamp(-args.clip_range_value, args.clip_range_value)
                        vf_losses = torch.max((new_values - returns[idx]) ** 2, (v_clipped - returns[idx]) ** 2)
                        vf_loss = 0.5 * (vf_losses * mk).sum() / n_valid
                        (pg_loss + vf_loss).backward()  # separate models: each loss reaches only its own
                    if not stats:  # [PPO detail 1] on the first micro-batch the ratio is 1, up to rounding
                        first_ratio_error = ((ratio - 1).abs() * mk).max().item()
                    losses = {"policy/loss": pg_loss, "value/loss": vf_loss}
                    stats.append(micro_batch_stats(losses, n_valid, logratio, ratio, entropy, mk, args.clip_range))
                check_finite(pg_loss.item() + vf_loss.item(), "PPO loss", it, args.out_dir)
                for model, optimizer in ((policy, policy_opt), (value_model, value_opt)):
                    torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip or float("inf"))
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
        t_update = time.time() - t0
        check_finite(policy, "policy weights", it, args.out_dir)  # before sampling from them

        # ---- statistics, adaptive KL, evaluation, checkpoint
        metrics = {**rollout_metrics(raw_scores, scores, kl, kl_coef, response_mask, ended, rt, returns, values),
                   **{k: all_reduce_mean(sum(s[k] for s in stats) / len(stats), rt) for k in stats[0]},
                   "policy/first_ratio_error": first_ratio_error,
                   "time/generate": t_generate, "time/score": t_score, "time/update": t_update}
        mean_kl = metrics["objective/kl"]
        if log_exact_kl:  # the same sequence KL, exactly per token along the sampled responses (scoring.exact_kl)
            metrics["objective/kl_exact"] = all_reduce_mean(token_kl_exact.sum(1).mean().item(), rt)
        texts = [tok.decode(response[b][response_mask[b]].tolist()).removesuffix("<|endoftext|>") for b in range(per_rank)]
        if args.adaptive_kl:  # [PPO detail 6] proportional controller: raise beta above the target KL, lower it below
            error = max(-0.2, min(0.2, mean_kl / args.target_kl - 1))
            kl_coef *= 1 + error * args.batch_size / args.kl_horizon
        it += 1
        if judge:  # the truth, which the policy never sees
            metrics.update(judge.metrics(it, policy, tok, [rows[i]["prompt"] for i in pick], texts, ended, rt))
        metrics.update(monitor.signals(reward_model, tokens, mask, P, args.micro_batch_size, raw_scores, rt))
        logger.log(it, metrics, LOG_LINE)
        logger.samples([rows[i]["prompt"] for i in pick], texts, scores.tolist(), args.log_samples)
        stop = monitor.stop(metrics, it, rt)
        if it % args.ckpt_interval == 0 or it == args.num_iters or stop:
            save_training_checkpoint(rt, args.out_dir, policy, stage="ppo", tokenizer_name=tok.name, step=it,
                                     args=args, optimizer=policy_opt, kl_coef=kl_coef,
                                     value_model=lora.trained_state_dict(value_model), value_optimizer=value_opt.state_dict())
        if stop:
            break
    del policy_ddp, value_ddp  # they hold the process group: released before the teardown
    finish_distributed(policy, rt)


if __name__ == "__main__":
    main(parse_args(Args))
