"""Generation speed: KV-cache sampling (GPT.generate) against recomputing the whole prefix for every token.

    python bench/bench_generate.py                 # CPU, GPT-2 124M shape, random weights
    python bench/bench_generate.py --device cuda   # on a GPU

Both decoders are greedy over the same left-padded prompts, and their tokens are checked to be identical
before any time is reported. Prints a table and appends a JSON line to bench/results/generate.jsonl.
"""

import argparse
import json
import os
import platform
import time

import torch

from minirlhf.model import GPT, GPTConfig


def recompute_generate(model, idx, mask, max_new_tokens, eos, pad):
    """No cache: each step runs the full (B, T + t) sequence through the model again."""
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    mask = mask.bool()
    for _ in range(max_new_tokens):
        logits = model(idx, mask)[:, -1].float()
        logits[:, pad] = float("-inf")
        nxt = torch.where(done, torch.full_like(done, pad, dtype=torch.long), logits.argmax(-1))
        idx = torch.cat([idx, nxt[:, None]], 1)
        mask = torch.cat([mask, ~done[:, None]], 1)
        done |= nxt == eos
        if done.all():
            break
    return idx


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="gpt2", help="a GPTConfig preset")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "generate.jsonl"))
    args = p.parse_args()
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = GPT(GPTConfig.preset(args.model)).to(args.device, dtype).eval()
    V = model.config.vocab_size
    eos, pad = V - 2, V - 1
    idx = torch.randint(0, V - 2, (args.batch_size, args.prompt_len), device=args.device)
    mask = torch.ones_like(idx)
    mask[: args.batch_size // 2, : args.prompt_len // 4] = 0  # half the rows left-padded
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def timed(fn):
        fn()  # warm-up
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        return out, time.perf_counter() - t

    # eos can never win greedily with random weights, so both run the full new_tokens steps
    with torch.no_grad():
        cached, t_cache = timed(lambda: model.generate(idx, mask, args.new_tokens, eos_token_id=eos, pad_token_id=pad, temperature=0)[0])
        full, t_full = timed(lambda: recompute_generate(model, idx, mask, args.new_tokens, eos, pad))
    assert torch.equal(cached, full), "KV-cache and recomputation disagree"
    n = args.batch_size * (cached.size(1) - args.prompt_len)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    row = dict(device=device_name, threads=torch.get_num_threads(), model=args.model, dtype=args.dtype,
               batch_size=args.batch_size, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
               kv_cache_tok_s=round(n / t_cache, 1), recompute_tok_s=round(n / t_full, 1),
               speedup=round(t_full / t_cache, 2), torch=torch.__version__)
    print(f"{'decoder':<12} {'tokens/s':>10}  ({args.model}, {args.dtype}, batch {args.batch_size}, "
          f"prompt {args.prompt_len}, {args.new_tokens} new, {device_name}, {torch.get_num_threads()} threads)")
    print(f"{'kv-cache':<12} {n / t_cache:>10.1f}")
    print(f"{'recompute':<12} {n / t_full:>10.1f}")
    print(f"speed-up: {t_full / t_cache:.2f}x; tokens identical: yes")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
