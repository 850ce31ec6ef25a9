"""Direct preference optimisation (DPO): the policy learns from preference pairs directly, no reward model, no RL.

    python train_dpo.py --train_data data/lab/prefs.jsonl --sft_ckpt out/sft/ckpt.pt --out_dir out/dpo
    python train_dpo.py ... --loss ipo --beta 0.1                  # the IPO variant
    torchrun --nproc_per_node=2 train_dpo.py ...
    python train_dpo.py --out_dir out/dpo --resume true

Rafailov et al. (2023): the KL-regularised RLHF objective max E[r] - beta * KL(pi || pi_ref) has the closed-form
optimum pi*(y|x) ~ pi_ref(y|x) exp(r(x, y) / beta), so every policy defines an implied reward

    r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))      (up to a term of x alone, which cancels in a pair)

and the Bradley-Terry loss of train_rm.py, written with that reward, trains the policy itself:

    loss = -log sigmoid(beta * ((log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r))))

log pi(y|x) is the sum over the response tokens (end-of-text included) of log p(token | prefix), from the one
log-prob function, minirlhf.scoring.response_logprobs (kernels.logprobs; kernels.linear_logprobs with
--fused_logprobs true, which never builds the logits). The reference is the SFT model, frozen: its log-probs
never change, so they are computed once, before the first step, for every pair, and the reference model is then
dropped. IPO (Azar et al. 2023) replaces the log-sigmoid by a squared loss that pulls the log-ratio margin to a
finite target instead of infinity, so it cannot overfit deterministic preferences:

    loss = ((log-ratio margin) - 1 / (2 * beta))^2

Metrics (as in the DPO literature): rewards/chosen and rewards/rejected are the mean implied rewards,
rewards/margin their difference, rewards/accuracy the fraction of pairs where chosen gets the higher implied
reward (ties count half, so it starts at 0.5: at step 0 the policy is the reference and every reward is 0,
up to float rounding).

Simplifications: pairs are drawn with replacement in random batches; without --eval_data a fraction of the
training pairs is held out; dropout is off (eval mode, as in PPO) so the policy at step 0 equals the reference
exactly; IPO uses log-probs summed over tokens like DPO (the IPO paper's tau; some implementations average
over tokens instead, which changes the scale of beta); no label smoothing.
"""

import dataclasses
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from minirlhf import lora
from minirlhf.checkpoint import load_model
from minirlhf.data import load_pairs, right_pad
from minirlhf.scoring import sequence_logprobs
from minirlhf.training import (
    Logger, accumulation_context, adamw, all_reduce_sum, check_finite, cosine_lr, finish_distributed, load_resume,
    opt, parse_args, restore_training_state, resume_path, save_training_checkpoint, seed_everything,
    set_cpu_threads, setup_runtime, split_batch, step_generator)


@dataclass
class Args:
    # ---- what to train, from what
    train_data: str = opt("data/lab/prefs.jsonl", "preference JSONL: {'prompt', 'chosen', 'rejected'} per line")
    eval_data: str = opt("", "held-out preference JSONL ('' = hold out eval_fraction of train_data)")
    eval_fraction: float = opt(0.1, "fraction of train_data held out when there is no eval_data", ge=0, lt=1)
    out_dir: str = opt("out/dpo", "where ckpt.pt and log.jsonl go")
    sft_ckpt: str = opt("out/sft/ckpt.pt", "the SFT checkpoint: the initial policy and the frozen reference")
    loss: str = opt("dpo", "'dpo' (logistic, Rafailov et al.) or 'ipo' (squared, Azar et al.)", choices=("dpo", "ipo"))
    beta: float = opt(0.1, "DPO: scale of the implied reward (KL strength); IPO: tau, target margin 1/(2 beta)", gt=0)
    # ---- the algorithm
    batch_size: int = opt(32, "pairs per optimizer step, over all ranks and micro-batches", ge=1)
    micro_batch_size: int = opt(32, "pairs per forward/backward (gradient accumulation makes up the rest)", ge=1)
    max_steps: int = opt(200, "optimizer steps", ge=1)
    lr: float = opt(3e-5, "peak learning rate (AdamW); too high pushes both log-probs down, far from the reference", ge=0)
    warmup_steps: int = opt(10, "linear warm-up steps", ge=0)
    weight_decay: float = opt(0.0, "AdamW weight decay on matrices (0: the pull toward the reference is beta's job)", ge=0)
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0 = off)", ge=0)
    # ---- evaluation, logging, infrastructure
    eval_interval: int = opt(50, "steps between held-out evaluations", ge=1)
    log_interval: int = opt(10, "steps between log lines", ge=1)
    ckpt_interval: int = opt(100, "steps between checkpoints (one is always written at the end)", ge=1)
    seed: int = opt(1337, "random seed")
    device: str = opt("auto", "'auto', 'cpu', 'cuda', 'cuda:1', ...")
    threads: int = opt(0, "CPU threads for torch (0 = choose; see training.set_cpu_threads)", ge=0)
    dtype: str = opt("bfloat16", "autocast dtype on GPU ('bfloat16' or 'float32'); CPU always runs fp32", choices=("bfloat16", "float32"))
    fused_logprobs: bool = opt(False, "log-probs by the fused linear kernel: no (2B, T, V) logits (less memory)")
    lora_rank: int = opt(0, "LoRA rank: train low-rank adapters on a frozen trunk (minirlhf/lora.py; 0 = off)", ge=0)
    lora_alpha: float = opt(16.0, "LoRA scale: the adapters' update is lora_alpha / lora_rank * B A", gt=0)
    lora_targets: str = opt("c_attn,c_proj,c_fc", "the blocks' Linear layers that get adapters (LoRA)")
    resume: bool = opt(False, "continue from out_dir/ckpt.pt (weights, optimizer, step, RNG)")
    overwrite: bool = opt(False, "start afresh even if out_dir holds a run (its checkpoint and log are replaced)")
    wandb_project: str = opt("", "log to this wandb project ('' = off)")

    def check(self, world_size):
        """Checks between flags, before any work (parse_args runs it; each flag's own range is in its opt)."""
        split_batch(self.batch_size, self.micro_batch_size, world_size)


def make_batch(pairs, device, pad_id):
    """Chosen rows then rejected rows in one right-padded (2B, T) batch, and a mask that is 1 on response tokens."""
    examples = [pair.chosen for pair in pairs] + [pair.rejected for pair in pairs]
    ids, mask = right_pad([x.tokens for x in examples], pad_id)
    response_mask = torch.zeros_like(mask)
    for i, x in enumerate(examples):
        response_mask[i, len(x.prompt_ids): len(x.tokens)] = 1
    return ids.to(device), mask.to(device), response_mask.to(device)


def preference_loss(logratios_chosen, logratios_rejected, beta, loss_type="dpo"):
    """Per-pair loss from the log-ratios log pi(y) - log pi_ref(y) of the chosen and rejected responses: (B,)."""
    margin = logratios_chosen - logratios_rejected
    if loss_type == "dpo":
        return -F.logsigmoid(beta * margin)
    if loss_type == "ipo":
        return (margin - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown loss {loss_type!r}: 'dpo' or 'ipo'")


def dpo_loss(model, ids, mask, response_mask, ref_logprobs, args):
    """Summed loss over the pairs, and summed statistics {chosen, rejected, correct} of the implied rewards.

    ref_logprobs: (B, 2) reference log-probs of (chosen, rejected), computed once before training.
    """
    chosen, rejected = sequence_logprobs(model, ids, mask, response_mask, fused=args.fused_logprobs).chunk(2)  # (B,) each
    logratios_chosen, logratios_rejected = chosen - ref_logprobs[:, 0], rejected - ref_logprobs[:, 1]
    losses = preference_loss(logratios_chosen, logratios_rejected, args.beta, args.loss)
    with torch.no_grad():
        r_c, r_r = args.beta * logratios_chosen, args.beta * logratios_rejected  # implied rewards
        stats = {"chosen": r_c.sum().item(), "rejected": r_r.sum().item(),
                 "correct": ((r_c > r_r).float() + 0.5 * (r_c == r_r).float()).sum().item()}
    return losses.sum(), stats


@torch.no_grad()
def pair_logprobs(model, pairs, micro_batch_size, device, pad_id, fused=False):
    """Sequence log-probs of every pair's (chosen, rejected) under `model`, in micro-batches: (N, 2) on device.

    Called once before training on the frozen reference (the SFT model): the ref_logprobs of dpo_loss."""
    out = [torch.stack(sequence_logprobs(model, *make_batch(pairs[i: i + micro_batch_size], device, pad_id),
                                         fused=fused).chunk(2), 1)
           for i in range(0, len(pairs), micro_batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 2, device=device)


def main(args):
    rt = setup_runtime(args.device)
    seed_everything(args.seed + rt.rank)
    os.makedirs(args.out_dir, exist_ok=True)

    # ---- model and data
    model, tok, _ = load_model(args.sft_ckpt, expect="gpt", device=rt.device)  # eval mode: dropout off
    model = lora.from_args(model, args, base=args.sft_ckpt)  # --lora_rank: adapters on the SFT trunk
    block_size = model.config.block_size
    train, n_cut = load_pairs(args.train_data, tok, block_size)
    if args.eval_data:
        evals = load_pairs(args.eval_data, tok, block_size)[0]
    else:  # hold out a fixed, seeded fraction
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed)).tolist()
        n_eval = int(len(train) * args.eval_fraction)
        evals, train = [train[i] for i in order[:n_eval]], [train[i] for i in order[n_eval:]]
    threads = set_cpu_threads(model.num_params(), args.threads)
    if rt.master:
        print(f"{len(train)} training pairs ({n_cut} prompts cut from the left to fit {block_size} tokens), "
              f"{len(evals)} held-out; model {model.num_params() / 1e6:.2f}M parameters on {rt.device} ({threads} CPU threads)")
    # The reference: the SFT model, frozen. Scored once here, then dropped (also when resuming: the policy in
    # out_dir has moved, the reference has not, so it is read from sft_ckpt again).
    t0 = time.time()
    ref_model = lora.AdaptersOff(model) if args.lora_rank else load_model(args.sft_ckpt, expect="gpt", device=rt.device)[0]
    ref_model.requires_grad_(False)  # LoRA: the policy with its adapters off, the SFT trunk itself
    with rt.autocast(args.dtype):
        train_ref = pair_logprobs(ref_model, train, args.micro_batch_size, rt.device, tok.pad_token,
                                       args.fused_logprobs)
        eval_ref = pair_logprobs(ref_model, evals, args.micro_batch_size, rt.device, tok.pad_token,
                                      args.fused_logprobs)
    del ref_model
    if rt.master:
        print(f"reference log-probs of {len(train) + len(evals)} pairs in {time.time() - t0:.1f}s")
    optimizer = adamw(model, args.lr, args.weight_decay)
    step = 0
    if args.resume:
        ckpt = load_resume(args.out_dir)
        lora.load_trained_state_dict(model, ckpt["model"])
        step = restore_training_state(ckpt, optimizer)
        if rt.master:
            print(f"resumed from {resume_path(args.out_dir)} at step {step}")
    ddp_model = DDP(model) if rt.world_size > 1 else model
    logger = Logger(args.out_dir, rt.master, args.wandb_project, dataclasses.asdict(args), resume=args.resume)

    # ---- each rank takes its share of the step's batch, in micro-batches
    per_rank, _, micro_size = split_batch(args.batch_size, args.micro_batch_size, rt.world_size)
    n_micro = per_rank // micro_size

    @torch.no_grad()
    def evaluate():
        """Held-out loss, implied-reward accuracy and margin."""
        total, correct, margin = 0.0, 0.0, 0.0
        for i in range(0, len(evals), args.micro_batch_size):
            batch = make_batch(evals[i: i + args.micro_batch_size], rt.device, tok.pad_token)
            loss_sum, stats = dpo_loss(model, *batch, eval_ref[i: i + args.micro_batch_size], args)
            total, correct = total + loss_sum.item(), correct + stats["correct"]
            margin += stats["chosen"] - stats["rejected"]
        n = max(len(evals), 1)
        return total / n, correct / n, margin / n

    while step < args.max_steps:
        t0 = time.time()
        lr = cosine_lr(step, args.max_steps, args.lr, args.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Same batch for the same (seed, step) on every run: resuming draws what an uninterrupted run draws.
        g = step_generator(args.seed, step)
        batch_idx = torch.randint(len(train), (args.batch_size,), generator=g).tolist()
        mine = batch_idx[rt.rank * per_rank: (rt.rank + 1) * per_rank]
        if n_micro > 1:  # micro-batches of similar lengths pad less; the step's loss is the same sum over its pairs
            mine.sort(key=lambda j: max(len(train[j].chosen.tokens), len(train[j].rejected.tokens)))
        micro_batches = [mine[i: i + micro_size] for i in range(0, per_rank, micro_size)]
        loss_total, totals = 0.0, {"chosen": 0.0, "rejected": 0.0, "correct": 0.0}
        for i, idx in enumerate(micro_batches):
            ids, mask, response_mask = make_batch([train[j] for j in idx], rt.device, tok.pad_token)
            with accumulation_context(rt, (ddp_model,), i == n_micro - 1, args.dtype):  # DDP syncs on the last
                loss_sum, stats = dpo_loss(ddp_model, ids, mask, response_mask, train_ref[idx], args)
                loss = loss_sum / per_rank  # mean over the rank's pairs; DDP averages over ranks
            loss.backward()
            loss_total += loss_sum.item()
            totals = {k: totals[k] + stats[k] for k in totals}
        loss_value = all_reduce_sum(loss_total, rt) / args.batch_size
        check_finite(loss_value, "train loss", step, args.out_dir)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip or float("inf")).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        chosen, rejected = (all_reduce_sum(totals[k], rt) / args.batch_size for k in ("chosen", "rejected"))
        metrics = {"train/loss": loss_value, "rewards/chosen": chosen, "rewards/rejected": rejected,
                   "rewards/margin": chosen - rejected,
                   "rewards/accuracy": all_reduce_sum(totals["correct"], rt) / args.batch_size,
                   "train/lr": lr, "train/grad_norm": grad_norm,
                   "time/pairs_per_s": args.batch_size / (time.time() - t0)}
        if evals and (step % args.eval_interval == 0 or step == args.max_steps):
            metrics["eval/loss"], metrics["eval/accuracy"], metrics["eval/margin"] = evaluate()
        if step % args.log_interval == 0 or step == args.max_steps or "eval/loss" in metrics:
            logger.log(step, metrics, ["train/loss", "rewards/chosen", "rewards/rejected", "rewards/margin",
                                       "rewards/accuracy", "eval/loss", "eval/accuracy", "time/pairs_per_s"])
        if step % args.ckpt_interval == 0 or step == args.max_steps:
            save_training_checkpoint(rt, args.out_dir, model, stage="dpo", tokenizer_name=tok.name, step=step,
                                     args=args, optimizer=optimizer, loss_type=args.loss, beta=args.beta)
    del ddp_model  # it holds the process group: released before the teardown
    finish_distributed(model, rt)


if __name__ == "__main__":
    main(parse_args(Args))
