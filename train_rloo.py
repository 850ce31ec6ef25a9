"""Stage 3 of RLHF without a critic: RLOO or GRPO against the reward model, k samples per prompt.

    python train_rloo.py --advantage rloo --prompts data/lab/prompts_train.jsonl --sft_ckpt out/sft/ckpt.pt --rm_ckpt out/rm/ckpt.pt
    python train_rloo.py --advantage grpo --out_dir out/grpo --kl_coef 0.04 ...
    diff train_ppo.py train_rloo.py    # what a critic-free method changes, and nothing else

A sibling of train_ppo.py: the same rollout, scoring pass and KL-penalised rewards (imported from it), statistics
(minirlhf/metrics.py), clipped ratio and update loop; the PPO details of docs/ppo_details.md that apply are marked
(not 8 and 9: no value model, no whitening). What differs is where the advantage comes from. PPO learns a value
model and runs GAE; here every prompt is sampled group_size (k) times and each response is judged against the others:

  RLOO (Ahmadian et al. 2024, "Back to Basics"): the KL penalty is folded into the sequence reward,
      R_i = score_i - kl_coef * sum_t (log pi - log pi_ref),   A_i = R_i - (1 / (k - 1)) sum_{j != i} R_j
      (the mean of the other k - 1 samples does not depend on response i, so as a baseline it adds no bias).
  GRPO (Shao et al. 2024, DeepSeekMath): the score alone, normalised within the group,
      A_i = (score_i - mean_j score_j) / (std_j score_j + eps),
      and the KL to the reference as a loss term, kl_coef * k3 per token, with the k3 estimator
      k3 = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1 >= 0 (unbiased for KL(pi || pi_ref), Schulman 2020).
Either way A_i is given to every token of response i. No value model, so no value loss and no GAE.

Simplifications and departures:
  - RLOO as in the paper has no ratio clipping (one update per batch); we keep PPO's clipped ratio and
    ppo_epochs passes, as TRL's RLOOTrainer does, so the two scripts differ only in the advantage.
  - GRPO averages the loss per response and then over responses; we average over all valid tokens of the
    minibatch, as train_ppo.py does (DAPO's "token-level" mean; longer responses weigh more). The group std is
    the unbiased one (torch.std), as in TRL. No advantage whitening across groups in either method.
  - The scoring pass is train_ppo.rollout_scores with a value model that returns 0 (there is none to call).
  - A group is k consecutive rows of one rank's batch: batch_size / world_size must be a multiple of group_size
    (Args.check), besides train_ppo.py's split into minibatches and micro-batches. Minibatches are drawn across
    groups: the advantages are fixed before the update.
"""

import dataclasses
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
from minirlhf.scoring import exact_kl, response_logprobs
from minirlhf.training import (
    Logger, accumulation_context, adamw, all_reduce_mean, all_reduce_sum, check_finite, finish_distributed, opt,
    parse_args, resume_run, save_training_checkpoint, seed_everything, set_cpu_threads, setup_runtime, split_batch,
    step_generator)
from train_ppo import kl_penalised_rewards, rollout_scores


@dataclass
class Args:
    advantage: str = opt("rloo", "'rloo' (leave-one-out baseline, KL in the reward) or 'grpo' (group-normalised, "
                                 "KL as a loss)", choices=("rloo", "grpo"))
    group_size: int = opt(4, "k: samples per prompt; the batch holds batch_size / k prompts", ge=2)
    # ---- what to train, from what
    prompts: str = opt("data/lab/prompts_train.jsonl", "prompts JSONL: {'prompt'} per line")
    sft_ckpt: str = opt("out/sft/ckpt.pt", "SFT checkpoint: the frozen reference (and the initial policy)")
    policy_ckpt: str = opt("", "start the policy here instead (iterated RLHF); the KL is still to sft_ckpt")
    rm_ckpt: str = opt("out/rm/ckpt.pt", "reward model; a,b,c = an ensemble (ensemble.py)")
    out_dir: str = opt("out/rloo", "where ckpt.pt and log.jsonl go")
    # ---- the algorithm
    num_iters: int = opt(60, "iterations (rollout + update)", ge=1)
    batch_size: int = opt(64, "rollouts per iteration (batch_size / group_size prompts), over all ranks", ge=1)
    num_minibatches: int = opt(4, "minibatches per epoch (one optimizer step each)", ge=1)
    micro_batch_size: int = opt(16, "rollouts per forward/backward (gradient accumulation within a minibatch)", ge=1)
    ppo_epochs: int = opt(4, "passes over each batch", ge=1)
    max_prompt_len: int = opt(64, "prompts are cut from the left to this many tokens", ge=1)
    max_new_tokens: int = opt(32, "response length limit", ge=1)
    temperature: float = opt(0.7, "sampling temperature; log-probs use the same", gt=0)
    lr: float = opt(3e-5, "policy learning rate (AdamW, constant)", ge=0)
    kl_coef: float = opt(0.05, "beta: RLOO's per-token KL penalty in the reward, or GRPO's weight of the k3 KL loss", ge=0)
    clip_range: float = opt(0.2, "PPO ratio clip epsilon", gt=0)
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
    resume: bool = opt(False, "continue from out_dir/ckpt.pt (policy, optimizer, iteration, RNG)")
    overwrite: bool = opt(False, "start afresh even if out_dir holds a run (its checkpoint and log are replaced)")
    wandb_project: str = opt("", "log to this wandb project ('' = off)")

    def check(self, world_size):
        """Checks between flags, before any work (parse_args runs it; each flag's own range is in its opt)."""
        per_rank, _, _ = split_batch(self.batch_size, self.micro_batch_size, world_size, self.num_minibatches)
        if per_rank % self.group_size:  # a prompt's k samples are consecutive rows of one rank's batch
            rows = f" gives {per_rank} rows on each of {world_size} ranks, which is" if world_size > 1 else " is"
            raise ValueError(f"--batch_size {self.batch_size}{rows} not a multiple of --group_size {self.group_size} "
                             f"(each rank samples its own groups of group_size responses per prompt)")


# the metrics printed on each iteration's line (log.jsonl has them all; the README documents each)
LOG_LINE = ["objective/rm_score", "objective/kl", "objective/kl_exact", "lab/gold", "eval/gold", "policy/approx_kl",
            "policy/clipfrac", "policy/kl_loss", "rollout/eos_rate", "time/generate", "time/score", "time/update"]


# ----------------------------------------------------------------------------- the math


def rloo_advantages(rewards, k):
    """rewards (B,), k consecutive rows per prompt -> R_i minus the mean of the other k - 1 rewards of its group."""
    r = rewards.view(-1, k)
    baseline = (r.sum(1, keepdim=True) - r) / (k - 1)  # leave-one-out mean
    return (r - baseline).view(-1)


def grpo_advantages(rewards, k, eps=1e-4):
    """rewards (B,), k consecutive rows per prompt -> (r - group mean) / (group std + eps)."""
    r = rewards.view(-1, k)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)).view(-1)


def no_value_model(tokens, mask, start=0):
    """Stands in for the value model in train_ppo.rollout_scores: V = 0 (critic-free methods have none)."""
    return torch.zeros_like(tokens[:, start:], dtype=torch.float)


def load_models(args, device):
    """(policy, ref_policy, reward_model, tokenizer, RM checkpoints): the policy is trained, the others frozen.
    [PPO detail 3] Every model comes in eval mode and stays there: no dropout anywhere."""
    policy, tok, _ = load_model(args.policy_ckpt or args.sft_ckpt, expect="gpt", device=device)
    ref_policy, ref_tok, _ = (None, tok, None) if args.lora_rank else load_model(args.sft_ckpt, expect="gpt", device=device)
    reward_model, rm_tok, rm_ckpts = load_reward_model(args.rm_ckpt, args.rm_aggregate, args.uwo_lambda, device)
    if args.lora_rank:  # the reference is the policy with its adapters off (lora.py)
        policy, ref_policy = lora.rl_policy(policy, args)
    if not ref_tok.name == rm_tok.name == tok.name:
        raise ValueError(f"tokenizers differ: policy {tok.name!r}, SFT {ref_tok.name!r}, reward model {rm_tok.name!r}")
    if not all(c.get("normalised") for c in rm_ckpts):  # [PPO detail 7] SFT samples score mean 0, std 1
        print(f"warning: {args.rm_ckpt} is not normalised on SFT samples; no_eos_score and kl_coef lose their scale")
    for frozen in (ref_policy, reward_model):
        frozen.requires_grad_(False)
    return policy, ref_policy, reward_model, tok, rm_ckpts


def main(args):
    rt = setup_runtime(args.device)
    seed_everything(args.seed + rt.rank)  # [PPO detail 10] each rank samples differently
    os.makedirs(args.out_dir, exist_ok=True)

    policy, ref_policy, reward_model, tok, rm_ckpts = load_models(args, rt.device)
    monitor = Monitor(rm_ckpts, args.monitor_rm_ckpt, args.early_stop, rt.device)  # monitor/*, --early_stop
    policy_opt = adamw(policy, args.lr)
    kl_coef, it = args.kl_coef, 0
    if args.resume:
        ckpt = resume_run(rt, args.out_dir, policy, policy_opt)
        it, kl_coef = ckpt["step"], ckpt["kl_coef"]
    policy_ddp = DDP(policy) if rt.world_size > 1 else policy
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
        # ---- 1. rollout: per_rank / k prompts, each k times in consecutive rows. [PPO detail 4] prompts left-padded
        # with a pad token that is not end-of-text; positions from the mask. [PPO detail 2] temperature T, no top-k/p.
        t0 = time.time()
        pick = torch.randint(len(prompts), (per_rank // args.group_size,),
                             generator=step_generator(args.seed, it, rt.rank, stream=1))
        pick = pick.repeat_interleave(args.group_size).tolist()
        ids, prompt_mask = left_pad([prompts[i] for i in pick], tok.pad_token)
        tokens, mask = policy.generate(ids.to(rt.device), prompt_mask.to(rt.device), args.max_new_tokens,
                                       eos_token_id=tok.eot_token, pad_token_id=tok.pad_token, temperature=args.temperature,
                                       generator=step_generator(args.seed, it, rt.rank, rt.device))
        P = ids.size(1)
        # [PPO detail 5] the mask ends at each response's first end-of-text: log-probs, KL, values, advantages,
        # whitening and every loss mean below read only the tokens before it (and it)
        response, response_mask = tokens[:, P:], mask[:, P:]  # (B, R)
        t_generate = time.time() - t0

        # ---- 2. score (train_ppo's scoring pass; no value model)
        t0 = time.time()
        with rt.autocast(args.dtype):
            logprobs, ref_logprobs, _, raw_scores = rollout_scores(
                policy, ref_policy, no_value_model, reward_model, tokens, mask, P, args)
            token_kl_exact = (exact_kl(policy, ref_policy, tokens, mask, P, args.temperature, args.micro_batch_size)
                              if log_exact_kl else None)
        m = response_mask.float()
        t_score = time.time() - t0

        # ---- 3. rewards and advantages from the group: one number per response, given to each of its tokens
        with torch.no_grad():
            # [PPO detail 6] RLOO's reward is PPO's, KL penalty and score; GRPO puts the KL in the loss instead
            in_reward = kl_coef if args.advantage == "rloo" else 0.0
            rewards, kl, scores, ended = kl_penalised_rewards(logprobs, ref_logprobs, raw_scores, response, m,
                                                              tok.eot_token, in_reward, args.no_eos_score)
            sequence_rewards = rewards.sum(1)  # (B,): score - in_reward * sequence KL
            if args.advantage == "rloo":
                advantages = rloo_advantages(sequence_rewards, args.group_size)
            else:
                advantages = grpo_advantages(sequence_rewards, args.group_size)
            advantages = advantages[:, None] * m  # (B, R)

        # ---- 4. update, the clipped ratio as in PPO. [PPO detail 10] epochs x minibatches (reshuffled) x micro-batches
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
                    with accumulation_context(rt, (policy_ddp,), k == len(chunks) - 1, args.dtype):
                        mk = m[idx]  # [PPO detail 1] below: the rollout's log-prob function, so the first ratio is 1
                        new_logprobs, entropy = response_logprobs(policy_ddp, tokens[idx], mask[idx], P,
                                                                  args.temperature, return_entropy=True, fused=args.fused_logprobs)
                        logratio = (new_logprobs - logprobs[idx]) * mk
                        ratio = torch.exp(logratio)
                        adv = advantages[idx]  # below: PPO's clipped surrogate
                        pg_losses = torch.max(-adv * ratio, -adv * ratio.clamp(1 - args.clip_range, 1 + args.clip_range))
                        pg_loss = (pg_losses * mk).sum() / n_valid
                        ref_logratio = (ref_logprobs[idx] - new_logprobs) * mk
                        k3 = torch.exp(ref_logratio) - ref_logratio - 1  # k3 estimator of KL(pi || pi_ref), per token
                        kl_loss = (k3 * mk).sum() / n_valid if args.advantage == "grpo" else torch.zeros(())
                        (pg_loss + kl_coef * kl_loss).backward()
                    if not stats:  # [PPO detail 1] on the first micro-batch the ratio is 1, up to rounding
                        first_ratio_error = ((ratio - 1).abs() * mk).max().item()
                    losses = {"policy/loss": pg_loss, "policy/kl_loss": kl_loss}
                    stats.append(micro_batch_stats(losses, n_valid, logratio, ratio, entropy, mk, args.clip_range))
                check_finite(pg_loss.item() + kl_loss.item(), "policy loss", it, args.out_dir)
                torch.nn.utils.clip_grad_norm_(policy.parameters(), args.grad_clip or float("inf"))
                policy_opt.step()
                policy_opt.zero_grad(set_to_none=True)
        t_update = time.time() - t0
        check_finite(policy, "policy weights", it, args.out_dir)  # before sampling from them

        # ---- statistics, evaluation, checkpoint
        metrics = {**rollout_metrics(raw_scores, scores, kl, kl_coef, response_mask, ended, rt),
                   **{k: all_reduce_mean(sum(s[k] for s in stats) / len(stats), rt) for k in stats[0]},
                   "policy/first_ratio_error": first_ratio_error,
                   "time/generate": t_generate, "time/score": t_score, "time/update": t_update}
        if log_exact_kl:  # the same sequence KL, exactly per token along the sampled responses (scoring.exact_kl)
            metrics["objective/kl_exact"] = all_reduce_mean(token_kl_exact.sum(1).mean().item(), rt)
        texts = [tok.decode(response[b][response_mask[b]].tolist()).removesuffix("<|endoftext|>") for b in range(per_rank)]
        it += 1
        if judge:  # the truth, which the policy never sees
            metrics.update(judge.metrics(it, policy, tok, [rows[i]["prompt"] for i in pick], texts, ended, rt))
        metrics.update(monitor.signals(reward_model, tokens, mask, P, args.micro_batch_size, raw_scores, rt))
        logger.log(it, metrics, LOG_LINE)
        logger.samples([rows[i]["prompt"] for i in pick], texts, scores.tolist(), args.log_samples)
        stop = monitor.stop(metrics, it, rt)
        if it % args.ckpt_interval == 0 or it == args.num_iters or stop:
            save_training_checkpoint(rt, args.out_dir, policy, stage=args.advantage, tokenizer_name=tok.name, step=it,
                                     args=args, optimizer=policy_opt, kl_coef=kl_coef)
        if stop:
            break
    del policy_ddp  # it holds the process group: released before the teardown
    finish_distributed(policy, rt)


if __name__ == "__main__":
    main(parse_args(Args))
