"""Stage 1 of RLHF: supervised fine-tuning (SFT) on (prompt, response) demonstrations.

    python train_sft.py --train_data data/lab/sft.jsonl --out_dir out/sft                 # the lab, CPU
    python train_sft.py --tokenizer gpt2 --init_from gpt2 --train_data data/hh_rlhf/sft_train.jsonl ...
    torchrun --nproc_per_node=2 train_sft.py ...                                           # DDP
    python train_sft.py --out_dir out/sft --resume true                                    # after an interruption

The model reads prompt + response + <|endoftext|> and is trained to predict the next token, with the loss on
the response tokens only (the prompt is given, not learnt): loss = -mean over response tokens of log p(token).
The end-of-text is a response token: the model must learn to stop.

Simplifications: examples are drawn with replacement in random batches (no epochs); one learning-rate schedule
(linear warm-up, cosine decay to 10 %); the held-out loss is computed on a fixed subset.
"""

import dataclasses
import os
import time
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from minirlhf import lora
from minirlhf.data import SFT_FIELDS, encode_example, read_jsonl, right_pad
from minirlhf.scoring import response_logprobs
from minirlhf.training import (
    Logger, accumulation_context, adamw, all_reduce_sum, check_finite, cosine_lr, finish_distributed, init_policy,
    load_resume, opt, parse_args, restore_training_state, resume_path, save_training_checkpoint, seed_everything,
    set_cpu_threads, setup_runtime, split_batch, step_generator)


@dataclass
class Args:
    # ---- what to train, from what
    train_data: str = opt("data/lab/sft.jsonl", "SFT JSONL: {'prompt', 'response'} per line")
    eval_data: str = opt("", "held-out SFT JSONL for the eval loss ('' = none)")
    out_dir: str = opt("out/sft", "where ckpt.pt and log.jsonl go")
    init_from: str = opt("scratch:small", "'scratch:PRESET' (tiny, small, gpt2, ...), a GPT-2 folder/hub name, or a .pt checkpoint")
    tokenizer: str = opt("lab", "'lab', 'gpt2' or a .tiktoken file")
    block_size: int = opt(128, "context length for a model from scratch; prompts are cut from the left to fit", ge=2)
    # ---- the algorithm
    batch_size: int = opt(32, "examples per optimizer step, over all ranks and micro-batches", ge=1)
    micro_batch_size: int = opt(32, "examples per forward/backward (gradient accumulation makes up the rest)", ge=1)
    max_steps: int = opt(300, "optimizer steps", ge=1)
    lr: float = opt(1e-3, "peak learning rate (AdamW)", ge=0)
    warmup_steps: int = opt(20, "linear warm-up steps", ge=0)
    weight_decay: float = opt(0.01, "AdamW weight decay on matrices", ge=0)
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0 = off)", ge=0)
    # ---- evaluation, logging, infrastructure
    eval_interval: int = opt(100, "steps between held-out evaluations", ge=1)
    eval_examples: int = opt(256, "held-out examples per evaluation", ge=1)
    log_interval: int = opt(10, "steps between log lines", ge=1)
    ckpt_interval: int = opt(100, "steps between checkpoints (one is always written at the end)", ge=1)
    seed: int = opt(1337, "random seed")
    device: str = opt("auto", "'auto', 'cpu', 'cuda', 'cuda:1', ...")
    threads: int = opt(0, "CPU threads for torch (0 = choose; see training.set_cpu_threads)", ge=0)
    dtype: str = opt("bfloat16", "autocast dtype on GPU ('bfloat16' or 'float32'); CPU always runs fp32", choices=("bfloat16", "float32"))
    fused_logprobs: bool = opt(False, "log-probs by the fused linear kernel: no (B, T, V) logits (less memory, slower)")
    lora_rank: int = opt(0, "LoRA rank: train low-rank adapters on a frozen trunk (minirlhf/lora.py; 0 = off)", ge=0)
    lora_alpha: float = opt(16.0, "LoRA scale: the adapters' update is lora_alpha / lora_rank * B A", gt=0)
    lora_targets: str = opt("c_attn,c_proj,c_fc", "the blocks' Linear layers that get adapters (LoRA)")
    lora_dropout: float = opt(0.0, "dropout on the adapters' input (SFT only: RL refuses it)", ge=0, lt=1)
    resume: bool = opt(False, "continue from out_dir/ckpt.pt (weights, optimizer, step, RNG)")
    overwrite: bool = opt(False, "start afresh even if out_dir holds a run (its checkpoint and log are replaced)")
    wandb_project: str = opt("", "log to this wandb project ('' = off)")

    def check(self, world_size):
        """Checks between flags, before any work (parse_args runs it; each flag's own range is in its opt)."""
        split_batch(self.batch_size, self.micro_batch_size, world_size)


def load_examples(path, tok, block_size):
    """JSONL -> list of (prompt ids, response ids + eot); counts prompts cut from the left."""
    rows = read_jsonl(path, SFT_FIELDS)
    examples, n_cut = [], 0
    for row in rows:
        p, r, cut = encode_example(tok, row["prompt"], row["response"], block_size)
        examples.append((p, r))
        n_cut += cut
    return examples, n_cut


def make_batch(examples, device, pad_id):
    """Right-padded prompt + response, and a mask that is 1 on the response tokens only (where the loss is)."""
    seqs = [p + r for p, r in examples]
    ids, mask = right_pad(seqs, pad_id)
    loss_mask = torch.zeros_like(mask)
    for i, (p, r) in enumerate(examples):
        loss_mask[i, len(p): len(p) + len(r)] = 1
    return ids.to(device), mask.to(device), loss_mask.to(device)


def sft_loss(model, ids, mask, loss_mask, fused=False):
    """Sum of -log p(response token) and the number of response tokens (the caller divides once per step)."""
    logprobs = response_logprobs(model, ids, mask, start=1, fused=fused)  # (B, T-1): token t+1 under position t
    lm = loss_mask[:, 1:].float()
    return -(logprobs * lm).sum(), lm.sum()


def main(args):
    rt = setup_runtime(args.device)
    seed_everything(args.seed + rt.rank)
    os.makedirs(args.out_dir, exist_ok=True)

    # ---- model and data
    model, tok = init_policy(args.init_from, args.tokenizer, args.block_size, rt.device)
    model = lora.from_args(model, args, base=args.init_from, rl=False)  # --lora_rank: adapters on a frozen trunk
    block_size = model.config.block_size
    train, n_cut = load_examples(args.train_data, tok, block_size)
    evals = load_examples(args.eval_data, tok, block_size)[0][: args.eval_examples] if args.eval_data else []
    threads = set_cpu_threads(model.num_params(), args.threads)
    if rt.master:
        print(f"{len(train)} training examples ({n_cut} prompts cut from the left to fit {block_size} tokens), "
              f"{len(evals)} held-out; model {model.num_params() / 1e6:.2f}M parameters on {rt.device} ({threads} CPU threads)")
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
        model.eval()
        total, count = 0.0, 0.0
        for i in range(0, len(evals), args.micro_batch_size):
            loss_sum, n = sft_loss(model, *make_batch(evals[i: i + args.micro_batch_size], rt.device, tok.pad_token),
                                   args.fused_logprobs)
            total, count = total + loss_sum.item(), count + n.item()
        model.train()
        return total / max(count, 1)

    while step < args.max_steps:
        t0 = time.time()
        lr = cosine_lr(step, args.max_steps, args.lr, args.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Same batch for the same (seed, step) on every run: resuming draws what an uninterrupted run draws.
        g = step_generator(args.seed, step)
        batch_idx = torch.randint(len(train), (args.batch_size,), generator=g).tolist()
        mine = [train[i] for i in batch_idx[rt.rank * per_rank: (rt.rank + 1) * per_rank]]
        if n_micro > 1:  # micro-batches of similar lengths pad less; the step's loss is the same sum over its tokens
            mine.sort(key=lambda example: len(example[0]) + len(example[1]))
        micro_batches = [make_batch(mine[i: i + micro_size], rt.device, tok.pad_token) for i in range(0, per_rank, micro_size)]
        n_tokens = all_reduce_sum(sum(m[2][:, 1:].sum().item() for m in micro_batches), rt)  # loss tokens, all ranks
        loss_total = 0.0
        for i, (ids, mask, loss_mask) in enumerate(micro_batches):
            with accumulation_context(rt, (ddp_model,), i == n_micro - 1, args.dtype):  # DDP syncs on the last
                loss_sum, _ = sft_loss(ddp_model, ids, mask, loss_mask, args.fused_logprobs)
                # The step's loss is the mean over all its response tokens on all ranks; DDP averages gradients
                # over ranks, so each rank's share is multiplied back by world_size.
                loss = loss_sum / n_tokens * rt.world_size
            loss.backward()
            loss_total += loss_sum.item()
        loss_value = all_reduce_sum(loss_total, rt) / n_tokens
        check_finite(loss_value, "train loss", step, args.out_dir)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip or float("inf")).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        metrics = {"train/loss": loss_value, "train/lr": lr, "train/grad_norm": grad_norm,
                   "time/tokens_per_s": sum(m[1].sum().item() for m in micro_batches) * rt.world_size / (time.time() - t0)}
        if evals and (step % args.eval_interval == 0 or step == args.max_steps):
            metrics["eval/loss"] = evaluate()
        if step % args.log_interval == 0 or step == args.max_steps or "eval/loss" in metrics:
            logger.log(step, metrics, ["train/loss", "eval/loss", "train/lr", "time/tokens_per_s"])
        if step % args.ckpt_interval == 0 or step == args.max_steps:
            save_training_checkpoint(rt, args.out_dir, model, stage="sft", tokenizer_name=tok.name, step=step,
                                     args=args, optimizer=optimizer)
    del ddp_model  # it holds the process group: released before the teardown
    finish_distributed(model, rt)


if __name__ == "__main__":
    main(parse_args(Args))
