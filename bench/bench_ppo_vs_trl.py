"""train_ppo.py against Hugging Face TRL's PPOTrainer, same settings, same machine, same run.

    python bench/bench_ppo_vs_trl.py --trl_python /path/to/venv/bin/python     # CPU
    python bench/bench_ppo_vs_trl.py --skip_trl                                # ours only

The settings are those of the peer harness (bench/peers/trl_ppo.py): a GPT-2-shaped model with 4 layers,
width 128, 4 heads, vocabulary 512, random weights; 64 rollouts of 24 prompt + 24 response tokens per
iteration, temperature 0.7, 4 PPO epochs x 4 minibatches, separate policy / reference / reward / value models,
fp32. Seconds per PPO iteration are the median over the timed iterations after one warm-up iteration, and
the median of that over --rounds alternating runs of each.
TRL needs its own environment (trl==1.12.0, the last release with PPOTrainer); the harness is bench/peers/trl_ppo.py.
Results: a table on stdout and bench/results/ppo_vs_trl_<device>.json.
"""

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import train_ppo  # noqa: E402
from minirlhf.checkpoint import save_checkpoint  # noqa: E402
from minirlhf.data import write_jsonl  # noqa: E402
from minirlhf.model import GPT, GPTConfig, ScalarGPT  # noqa: E402
from minirlhf.tokenizer import Tokenizer, write_ranks  # noqa: E402
from minirlhf.training import parse_args  # noqa: E402


def small_tokenizer(path, vocab):
    """256 byte tokens + (vocab - 258) two-letter tokens, then eot and pad: exactly `vocab` ids."""
    ranks = {bytes([b]): b for b in range(256)}
    letters = b"abcdefghijklmnopqrstuvwxyz"
    for a in letters:
        for b in letters:
            if len(ranks) < vocab - 2:
                ranks[bytes([a, b])] = len(ranks)
    write_ranks(path, ranks)
    return Tokenizer("bench", ranks)


def run_ours(args, workdir):
    tok_path = os.path.join(workdir, "bench.tiktoken")
    tok = small_tokenizer(tok_path, args.vocab)
    assert tok.vocab_size == args.vocab
    rng = random.Random(0)
    # 24-token prompts: random two-letter tokens (prompts are cut from the left to exactly prompt_len)
    prompts = [{"prompt": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4 * args.prompt_len))}
               for _ in range(512)]
    assert all(len(tok.encode(p["prompt"])) >= args.prompt_len for p in prompts)
    write_jsonl(os.path.join(workdir, "prompts.jsonl"), prompts)
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=64, vocab_size=args.vocab, n_layer=4, n_head=4, n_embd=128)
    save_checkpoint(os.path.join(workdir, "sft.pt"), GPT(cfg), stage="sft", tokenizer_name=tok_path)
    save_checkpoint(os.path.join(workdir, "rm.pt"), ScalarGPT(cfg), stage="rm", tokenizer_name=tok_path,
                    normalised=True)
    out = os.path.join(workdir, "ppo")
    ppo_args = parse_args(train_ppo.Args, [
        "--prompts", os.path.join(workdir, "prompts.jsonl"), "--eval_prompts", "", "--sft_ckpt",
        os.path.join(workdir, "sft.pt"), "--rm_ckpt", os.path.join(workdir, "rm.pt"), "--out_dir", out,
        "--num_iters", str(args.iters + 1), "--batch_size", "64", "--num_minibatches", "4",
        "--micro_batch_size", "16", "--ppo_epochs", "4", "--max_prompt_len", str(args.prompt_len),
        "--max_new_tokens", str(args.response_len), "--temperature", "0.7", "--lr", "3e-6",
        "--kl_coef", "0.05", "--ckpt_interval", "100000", "--log_samples", "0", "--device", "cpu",
        "--exact_kl", "false",  # a lab diagnostic TRL does not compute
        "--threads", str(args.threads)])  # TRL's thread count (ours would pick 1 for a model this small)
    t0 = time.perf_counter()
    train_ppo.main(ppo_args)
    wall = time.perf_counter() - t0
    log = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    # time/elapsed is stamped when each iteration is logged; differences are whole iterations
    stamps = [row["time/elapsed"] for row in log]
    per_iter = [b - a for a, b in zip(stamps, stamps[1:])]  # iterations 2.. (the first is the warm-up)
    gen = [row["time/generate"] for row in log[1:]]
    return {"impl": "minirlhf", "s_per_iter": round(statistics.median(per_iter), 4),
            "s_per_iter_all": [round(x, 4) for x in per_iter], "gen_s_per_iter": round(statistics.median(gen), 4),
            "response_len": statistics.median(row["rollout/response_len"] for row in log), "wall_s": round(wall, 2),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def run_trl(args):
    cmd = [args.trl_python, args.trl_script, "--vocab", str(args.vocab), "--iters", str(args.iters),
           "--prompt_len", str(args.prompt_len), "--response_len", str(args.response_len), "--threads", str(args.threads)]
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"TRL harness failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=5, help="timed iterations after one warm-up")
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--prompt_len", type=int, default=24)
    p.add_argument("--response_len", type=int, default=24)
    p.add_argument("--trl_python", default=os.environ.get("TRL_PYTHON", sys.executable))
    p.add_argument("--trl_script", default=os.path.join(here, "peers", "trl_ppo.py"))
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, ours and TRL's")
    p.add_argument("--skip_trl", action="store_true")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of ours and TRL; medians are reported")
    p.add_argument("--out", default=os.path.join(here, "results", "ppo_vs_trl_cpu.json"))
    args = p.parse_args()

    # Rounds alternate ours and TRL, so that a machine whose speed drifts (shared cores) slows both alike.
    rounds = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as workdir:
            ours = run_ours(args, workdir)
        trl = None if args.skip_trl else run_trl(args)
        rounds.append({"minirlhf": ours["s_per_iter"], "trl": trl["s_per_iter"] if trl else None})
    if args.rounds > 1:
        ours["s_per_iter"] = statistics.median(r["minirlhf"] for r in rounds)
        if trl:
            trl["s_per_iter"] = statistics.median(r["trl"] for r in rounds)
        print("rounds (s / iteration, minirlhf / TRL): "
              + ", ".join(f"{r['minirlhf']:.3f} / {r['trl']}" for r in rounds))
    print(f"\nPPO iteration, {args.vocab}-token vocabulary, 64 x ({args.prompt_len} + {args.response_len}) tokens, "
          f"4 epochs x 4 minibatches, fp32, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch threads {ours['threads']}")
    print(f"{'implementation':<16} {'s / iteration':>14} {'generation s':>13}")
    print(f"{'minirlhf':<16} {ours['s_per_iter']:>14.3f} {ours['gen_s_per_iter']:>13.3f}")
    if trl:
        print(f"{'TRL ' + trl['trl']:<16} {trl['s_per_iter']:>14.3f} {trl['gen_s_per_iter']:>13.3f}")
        print(f"ratio minirlhf / TRL: {ours['s_per_iter'] / trl['s_per_iter']:.3f} (target <= 0.667)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": platform.platform(), "cpu_count": os.cpu_count(), "minirlhf": ours, "trl": trl,
                   "rounds": rounds,
                   "ratio": ours["s_per_iter"] / trl["s_per_iter"] if trl else None,
                   "date": time.strftime("%Y-%m-%d")}, f, indent=1)


if __name__ == "__main__":
    main()
