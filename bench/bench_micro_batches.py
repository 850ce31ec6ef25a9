"""What an SFT step of the lab's model costs, by batch and micro-batch: is the quick start compute-bound, and what
do length-sorted micro-batches save?

    python bench/bench_micro_batches.py              # about a minute on 2 cores; run it on a quiet machine

train_sft.py's step on the lab's `small` model (4 layers, width 128) and the lab's SFT data (make_data, seed 0),
at the thread count the quick start uses: forward, backward, AdamW, over the same drawn batches for every setting.
For each (batch, micro-batch) it prints milliseconds per step and the padded positions per real token, and
writes bench/results/micro_batches_cpu.json. Micro-batches are cut as train_sft.py cuts them (sorted by length
when there are several).
"""

import datetime
import json
import os
import platform
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from minirlhf.data import write_jsonl  # noqa: E402
from minirlhf.lab.make_data import make_data  # noqa: E402
from minirlhf.training import adamw, init_policy, set_cpu_threads, step_generator  # noqa: E402
from train_sft import load_examples, make_batch, sft_loss  # noqa: E402

SETTINGS = [(32, 32), (32, 16), (32, 8), (16, 16)]  # (batch, micro-batch)
STEPS, WARMUP = 40, 5


def time_setting(model, optimizer, train, pad, batch_size, micro_size):
    seconds, padded, real = 0.0, 0, 0
    for step in range(WARMUP + STEPS):
        idx = torch.randint(len(train), (batch_size,), generator=step_generator(0, step)).tolist()
        mine = [train[i] for i in idx]
        if batch_size > micro_size:  # as train_sft.py cuts a step's examples
            mine.sort(key=lambda example: len(example[0]) + len(example[1]))
        t0 = time.perf_counter()
        micro_batches = [make_batch(mine[i: i + micro_size], "cpu", pad) for i in range(0, batch_size, micro_size)]
        n_tokens = sum(m[2][:, 1:].sum().item() for m in micro_batches)
        for ids, mask, loss_mask in micro_batches:
            loss_sum, _ = sft_loss(model, ids, mask, loss_mask)
            (loss_sum / n_tokens).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= WARMUP:
            seconds += time.perf_counter() - t0
            padded += sum(m[0].numel() for m in micro_batches)
            real += sum(int(m[1].sum()) for m in micro_batches)
    return seconds / STEPS * 1000, padded / real


def main():
    with tempfile.TemporaryDirectory() as d:
        write_jsonl(os.path.join(d, "sft.jsonl"), make_data(seed=0)["sft"])
        model, tok = init_policy("scratch:small", "lab", 128, "cpu")
        train, _ = load_examples(os.path.join(d, "sft.jsonl"), tok, 128)
    threads = set_cpu_threads(model.num_params())
    optimizer = adamw(model, 1e-4, 0.01)
    rows = []
    print(f"{'batch':>6} {'micro':>6} {'ms / step':>10} {'positions / token':>18}")
    for batch_size, micro_size in SETTINGS:
        ms, pad_ratio = time_setting(model, optimizer, train, tok.pad_token, batch_size, micro_size)
        rows.append({"batch_size": batch_size, "micro_batch_size": micro_size, "ms_per_step": round(ms, 1),
                     "positions_per_token": round(pad_ratio, 3)})
        print(f"{batch_size:>6} {micro_size:>6} {ms:>10.1f} {pad_ratio:>18.3f}", flush=True)
    path = os.path.join(ROOT, "bench", "results", "micro_batches_cpu.json")
    with open(path, "w") as f:
        json.dump({"machine": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                   "threads": threads, "model": "small", "steps": STEPS, "rows": rows,
                   "date": datetime.date.today().isoformat()}, f, indent=1)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
