"""Stage 2 of RLHF: a reward model from preference pairs (Bradley-Terry).

    python train_rm.py --train_data data/lab/prefs.jsonl --sft_ckpt out/sft/ckpt.pt --out_dir out/rm
    torchrun --nproc_per_node=2 train_rm.py ...
    python train_rm.py --out_dir out/rm --resume true
    python train_rm.py --train_data prefs.jsonl,prefs_round2.jsonl --init_from out/rm/ckpt.pt --out_dir out/rm2
                                                        # a second round of iterated RLHF: all pairs so far

The reward model is the SFT model with its vocabulary head replaced by a scalar head (std 1/sqrt(d+1)), read at
the last real token of prompt + response (the end-of-text when there is one). Bradley-Terry: a person prefers
A to B with probability sigmoid(r(A) - r(B)), so the loss is -log sigmoid(r(chosen) - r(rejected)).

After training, the output is normalised so that responses *sampled from the SFT model* score mean 0 and std 1:
r' = (r - mean) / std, folded into the head's weight and bias. PPO's KL coefficient and missing-EOS penalty are
then in units of "one standard deviation of SFT reward", the same for every run.

Simplifications: pairs are drawn with replacement in random batches; without --eval_data a fraction of the
training pairs is held out for the accuracy report.
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
from minirlhf.data import encode_prompt, left_pad, load_pairs
from minirlhf.model import ScalarGPT
from minirlhf.scoring import last_token_scores
from minirlhf.training import (
    Logger, accumulation_context, adamw, all_reduce_sum, check_finite, cosine_lr, finish_distributed, load_resume,
    opt, parse_args, restore_training_state, resume_path, save_training_checkpoint, seed_everything,
    set_cpu_threads, setup_runtime, split_batch, step_generator)


@dataclass
class Args:
    # ---- what to train, from what
    train_data: str = opt("data/lab/prefs.jsonl", "preference JSONL: {'prompt', 'chosen', 'rejected'} per line; "
                                                   "several files comma-separated")
    eval_data: str = opt("", "held-out preference JSONL ('' = hold out eval_fraction of train_data)")
    eval_fraction: float = opt(0.1, "fraction of train_data held out when there is no eval_data", ge=0, lt=1)
    out_dir: str = opt("out/rm", "where ckpt.pt and log.jsonl go")
    sft_ckpt: str = opt("out/sft/ckpt.pt", "the SFT checkpoint the reward model starts from (and is normalised on)")
    init_from: str = opt("", "a reward model checkpoint to continue from instead (a later round of iterated RLHF)")
    # ---- the algorithm
    batch_size: int = opt(32, "pairs per optimizer step, over all ranks and micro-batches", ge=1)
    micro_batch_size: int = opt(32, "pairs per forward/backward (gradient accumulation makes up the rest)", ge=1)
    max_steps: int = opt(200, "optimizer steps", ge=1)
    lr: float = opt(3e-4, "peak learning rate (AdamW)", ge=0)
    warmup_steps: int = opt(10, "linear warm-up steps", ge=0)
    weight_decay: float = opt(0.01, "AdamW weight decay on matrices", ge=0)
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0 = off)", ge=0)
    # ---- the normalisation on SFT samples
    norm_samples: int = opt(256, "SFT samples the output is normalised on (mean 0, std 1)", ge=2)
    norm_temperature: float = opt(0.7, "sampling temperature for those samples (use PPO's)", gt=0)
    max_new_tokens: int = opt(48, "response length limit for those samples", ge=1)
    # ---- evaluation, logging, infrastructure
    eval_interval: int = opt(50, "steps between held-out evaluations", ge=1)
    log_interval: int = opt(10, "steps between log lines", ge=1)
    ckpt_interval: int = opt(100, "steps between checkpoints (one is always written at the end)", ge=1)
    seed: int = opt(1337, "random seed")
    device: str = opt("auto", "'auto', 'cpu', 'cuda', 'cuda:1', ...")
    threads: int = opt(0, "CPU threads for torch (0 = choose; see training.set_cpu_threads)", ge=0)
    dtype: str = opt("bfloat16", "autocast dtype on GPU ('bfloat16' or 'float32'); CPU always runs fp32", choices=("bfloat16", "float32"))
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
    """Chosen rows then rejected rows in one left-padded (2B, T) batch: one forward pass scores both.

    Left padding puts every row's last real token, where the reward is read, in the last column.
    """
    ids, mask = left_pad([pair.chosen.tokens for pair in pairs] + [pair.rejected.tokens for pair in pairs], pad_id)
    return ids.to(device), mask.to(device)


def bradley_terry(model, ids, mask):
    """Summed loss -log sigmoid(r_chosen - r_rejected), number of pairs, number ranked correctly."""
    # start=T-1: only the last column is read, so the last block computes its query, MLP and score there only
    rewards = last_token_scores(model, ids, mask, start=ids.size(1) - 1)  # (2B,)
    chosen, rejected = rewards.chunk(2)
    return -F.logsigmoid(chosen - rejected).sum(), chosen.numel(), (chosen > rejected).sum()


@torch.no_grad()
def normalise_on_sft_samples(rm, sft, tok, prompts, args, device):
    """Fold (r - mean) / std over SFT samples into the score head. Returns (mean, std) before folding."""
    g = step_generator(args.seed, 0, device=device)
    pick = torch.randint(len(prompts), (args.norm_samples,), generator=torch.Generator().manual_seed(args.seed))
    scores = []
    n = args.micro_batch_size  # sample in micro-batches: the KV cache of 64 x 1024 positions of 355M is 13 GB
    for i in range(0, args.norm_samples, n):
        batch = [encode_prompt(tok, prompts[j], sft.config.block_size - args.max_new_tokens)[0] for j in pick[i: i + n]]
        ids, mask = left_pad(batch, tok.pad_token)
        tokens, tmask = sft.generate(ids.to(device), mask.to(device), args.max_new_tokens, eos_token_id=tok.eot_token,
                                     pad_token_id=tok.pad_token, temperature=args.norm_temperature, generator=g)
        scores.append(last_token_scores(rm, tokens, tmask))
    scores = torch.cat(scores)
    mean, std = scores.mean().item(), scores.std().clamp(min=1e-6).item()
    rm.score.weight.div_(std)
    rm.score.bias.sub_(mean).div_(std)
    return mean, std


@torch.no_grad()
def training_score_quantiles(rm, pairs, args, device, pad_id):
    """Normalised scores of every distinct training response (chosen and rejected) -> {quantile: score}, max included.

    Stored in the checkpoint so that PPO can count the responses its reward model scores above anything the
    model saw in training (an early-warning signal of reward hacking: the policy has left the data)."""
    # A response is a side of every pair its prompt's samples form with it, and a prompt's samples often repeat
    # one another: score each distinct one once, in order of length, so that a batch pads little.
    sequences = sorted({tuple(t) for pair in pairs for t in (pair.chosen.tokens, pair.rejected.tokens)},
                       key=lambda t: (len(t), t))
    sequences = [list(t) for t in sequences]
    scores = []
    for i in range(0, len(sequences), args.micro_batch_size):
        ids, mask = left_pad(sequences[i: i + args.micro_batch_size], pad_id)
        scores.append(last_token_scores(rm, ids.to(device), mask.to(device), start=ids.size(1) - 1).float().cpu())
    scores = torch.cat(scores)
    qs = (0.5, 0.9, 0.99, 1.0)
    return {str(q): v for q, v in zip(qs, torch.quantile(scores, torch.tensor(qs)).tolist())}


def main(args):
    rt = setup_runtime(args.device)
    seed_everything(args.seed + rt.rank)
    os.makedirs(args.out_dir, exist_ok=True)

    # ---- model and data
    sft, tok, _ = load_model(args.sft_ckpt, expect="gpt", device=rt.device)
    if args.init_from:  # iterated RLHF: the last round's reward model goes on learning from all rounds' pairs
        model, rm_tok, _ = load_model(args.init_from, expect="scalar", device=rt.device)
        if rm_tok.name != tok.name:
            raise ValueError(f"{args.init_from} uses tokenizer {rm_tok.name!r} but {args.sft_ckpt} uses {tok.name!r}")
        model.train()
    else:
        model = ScalarGPT.from_gpt(sft).train()
    model = lora.from_args(model, args, base=args.init_from or args.sft_ckpt, trained=("score.",), rl=False)  # LoRA + head
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
    optimizer = adamw(model, args.lr, args.weight_decay)
    step = 0
    if args.resume:
        ckpt = load_resume(args.out_dir, expect="scalar")
        if ckpt.get("normalised"):
            if rt.master:
                print(f"{resume_path(args.out_dir)} is already the finished, normalised reward model")
            finish_distributed(model, rt)
            return
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
        model.eval()
        total, count, correct = 0.0, 0, 0
        for i in range(0, len(evals), args.micro_batch_size):
            loss_sum, n, right = bradley_terry(model, *make_batch(evals[i: i + args.micro_batch_size], rt.device, tok.pad_token))
            total, count, correct = total + loss_sum.item(), count + n, correct + right.item()
        model.train()
        return total / max(count, 1), correct / max(count, 1)

    while step < args.max_steps:
        t0 = time.time()
        lr = cosine_lr(step, args.max_steps, args.lr, args.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Same batch for the same (seed, step) on every run: resuming draws what an uninterrupted run draws.
        g = step_generator(args.seed, step)
        batch_idx = torch.randint(len(train), (args.batch_size,), generator=g).tolist()
        mine = [train[i] for i in batch_idx[rt.rank * per_rank: (rt.rank + 1) * per_rank]]
        if n_micro > 1:  # micro-batches of similar lengths pad less; the step's loss is the same sum over its pairs
            mine.sort(key=lambda pair: max(len(pair.chosen.tokens), len(pair.rejected.tokens)))
        micro_batches = [make_batch(mine[i: i + micro_size], rt.device, tok.pad_token) for i in range(0, per_rank, micro_size)]
        loss_total, correct = 0.0, 0
        for i, (ids, mask) in enumerate(micro_batches):
            with accumulation_context(rt, (ddp_model,), i == n_micro - 1, args.dtype):  # DDP syncs on the last
                loss_sum, _, right = bradley_terry(ddp_model, ids, mask)
                loss = loss_sum / per_rank  # mean over the rank's pairs; DDP averages over ranks
            loss.backward()
            loss_total, correct = loss_total + loss_sum.item(), correct + right.item()
        loss_value = all_reduce_sum(loss_total, rt) / args.batch_size
        check_finite(loss_value, "train loss", step, args.out_dir)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip or float("inf")).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        metrics = {"train/loss": loss_value, "train/accuracy": all_reduce_sum(correct, rt) / args.batch_size,
                   "train/lr": lr, "train/grad_norm": grad_norm,
                   "time/pairs_per_s": args.batch_size / (time.time() - t0)}
        if evals and (step % args.eval_interval == 0 or step == args.max_steps):
            metrics["eval/loss"], metrics["eval/accuracy"] = evaluate()
        if step % args.log_interval == 0 or step == args.max_steps or "eval/loss" in metrics:
            logger.log(step, metrics, ["train/loss", "train/accuracy", "eval/loss", "eval/accuracy", "time/pairs_per_s"])
        if step % args.ckpt_interval == 0 and step < args.max_steps:
            save_training_checkpoint(rt, args.out_dir, model, stage="rm", tokenizer_name=tok.name, step=step,
                                     args=args, optimizer=optimizer)

    # ---- normalise on SFT samples, then the final checkpoint
    model.eval()
    mean, std = normalise_on_sft_samples(model, sft, tok, [p for _, _, p in train], args, rt.device)
    if rt.master:
        print(f"reward normalised on {args.norm_samples} SFT samples: raw mean {mean:.4f}, std {std:.4f} -> 0, 1")
    save_training_checkpoint(rt, args.out_dir, model, stage="rm", tokenizer_name=tok.name, step=step, args=args,
                             optimizer=optimizer, reward_mean=mean, reward_std=std, normalised=True,
                             train_score_quantiles=training_score_quantiles(model, train, args, rt.device, tok.pad_token),
                             eval_accuracy=evaluate()[1] if evals else None)
    del ddp_model  # it holds the process group: released before the teardown
    finish_distributed(model, rt)


if __name__ == "__main__":
    main(parse_args(Args))
