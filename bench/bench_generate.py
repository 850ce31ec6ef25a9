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


def measure(model_name="gpt2", device="cpu", dtype="float32", batch_size=8, prompt_len=64, new_tokens=64,
            recompute=True):
    """Greedy generation on random weights: KV-cache tokens/s and, with recompute, the no-cache tokens/s and
    whether both decoders gave the same tokens. Returns one results row (a dict)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset(model_name)).to(device, getattr(torch, dtype)).eval()
    V = model.config.vocab_size
    eos, pad = V - 2, V - 1
    idx = torch.randint(0, V - 2, (batch_size, prompt_len), device=device)
    mask = torch.ones_like(idx)
    mask[: batch_size // 2, : prompt_len // 4] = 0  # half the rows left-padded
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def timed(fn):
        fn()  # warm-up
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        return out, time.perf_counter() - t

    # eos can never win greedily with random weights, so both run the full new_tokens steps
    with torch.no_grad():
        cached, t_cache = timed(lambda: model.generate(idx, mask, new_tokens, eos_token_id=eos, pad_token_id=pad, temperature=0)[0])
        if recompute:
            full, t_full = timed(lambda: recompute_generate(model, idx, mask, new_tokens, eos, pad))
    n = batch_size * (cached.size(1) - prompt_len)
    device_name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu"
    row = dict(device=device_name, threads=torch.get_num_threads(), model=model_name, dtype=dtype,
               batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens,
               kv_cache_tok_s=round(n / t_cache, 1), torch=torch.__version__)
    if recompute:
        row.update(recompute_tok_s=round(n / t_full, 1), speedup=round(t_full / t_cache, 2),
                   tokens_identical=torch.equal(cached, full))
    return row


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
    row = measure(args.model, args.device, args.dtype, args.batch_size, args.prompt_len, args.new_tokens)
    assert row["tokens_identical"], "KV-cache and recomputation disagree"
    print(f"{'decoder':<12} {'tokens/s':>10}  ({args.model}, {args.dtype}, batch {args.batch_size}, "
          f"prompt {args.prompt_len}, {args.new_tokens} new, {row['device']}, {row['threads']} threads)")
    print(f"{'kv-cache':<12} {row['kv_cache_tok_s']:>10.1f}")
    print(f"{'recompute':<12} {row['recompute_tok_s']:>10.1f}")
    print(f"speed-up: {row['speedup']:.2f}x; tokens identical: yes")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
