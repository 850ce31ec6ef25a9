"""A lab run gives the same digits on one CPU thread as on two, so the thread count can follow the free cores.

    python -m pytest tests/test_threads.py -q

training.set_cpu_threads gives a stage two threads on a quiet 2-core machine and one beside a busy core. That
is only safe if nothing a run writes depends on the count. Two things make it so: MKL's strict reproducible
mode for matmuls (minirlhf/__init__.py) and model.LayerNorm (torch's fused LayerNorm backward sums the gain's
gradient in one piece per thread). Here the lab's chain (SFT on the `small` model at the quick start's batch,
samples, labels, reward model, PPO) runs with OMP_NUM_THREADS=1 and again with 2, in the background beside the
other tests (the digits must not care), and every tensor of every checkpoint (weights, optimizer moments, RNG
states), every log value and the samples must be identical. docs/reliability.md has the whole seed-0 quick start
checked the same way.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from minirlhf.training import cpu_ticks, free_cores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ)  # taken at import: in_background runs while other tests may monkeypatch os.environ
STAGES = ["sft", "rm", "ppo"]


def run_chain(d):
    """The lab's chain in folder d: SFT (the `small` model, the quick start's batch of 32), SFT samples labelled by
    the simulated annotators, a reward model, two PPO iterations, on the threads the caller set."""
    import train_ppo
    import train_rm
    import train_sft
    from minirlhf.data import write_jsonl
    from minirlhf.lab import annotate
    from minirlhf.lab.make_data import make_data
    from minirlhf.training import parse_args

    os.makedirs(d, exist_ok=True)
    for name, rows in make_data(seed=0, n_sft=128, n_train_per_family=6, n_eval_per_family=1).items():
        write_jsonl(f"{d}/{name}.jsonl", rows)
    train_sft.main(parse_args(train_sft.Args, [
        "--train_data", f"{d}/sft.jsonl", "--out_dir", f"{d}/sft", "--init_from", "scratch:small",
        "--batch_size", "32", "--micro_batch_size", "32", "--max_steps", "3", "--lr", "2e-3"]))
    annotate.main(["sample", "--ckpt", f"{d}/sft/ckpt.pt", "--prompts", f"{d}/prompts_train.jsonl",
                   "--out", f"{d}/samples.jsonl", "--k", "4", "--max_new_tokens", "12"])
    annotate.main(["label", "--samples", f"{d}/samples.jsonl", "--out", f"{d}/prefs.jsonl", "--labeller", "sim"])
    train_rm.main(parse_args(train_rm.Args, [
        "--train_data", f"{d}/prefs.jsonl", "--sft_ckpt", f"{d}/sft/ckpt.pt", "--out_dir", f"{d}/rm",
        "--batch_size", "32", "--max_steps", "3", "--norm_samples", "32", "--max_new_tokens", "12"]))
    train_ppo.main(parse_args(train_ppo.Args, [
        "--prompts", f"{d}/prompts_train.jsonl", "--eval_prompts", "", "--sft_ckpt", f"{d}/sft/ckpt.pt",
        "--rm_ckpt", f"{d}/rm/ckpt.pt", "--out_dir", f"{d}/ppo", "--num_iters", "2", "--batch_size", "32",
        "--num_minibatches", "2", "--ppo_epochs", "2", "--max_new_tokens", "12"]))


def in_background(tmp):
    """The chain on one thread, then on two, in a process of its own (conftest.py starts this beside the other
    tests; the digits must not care what else runs)."""
    done = subprocess.run([sys.executable, os.path.abspath(__file__), str(tmp)], cwd=ROOT, env={**ENV, "PYTHONPATH": ROOT},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    threads = done.stdout.split("(1 CPU threads)")
    assert len(threads) == 4 and "(2 CPU threads)" in threads[-1]  # SFT, RM, PPO on one thread, then on two
    return tmp


def tensors(obj, path=""):
    """Every tensor in a checkpoint (weights, optimizer moments, RNG states), by its path."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors(v, f"{path}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{path}[{i}]")


def logged(path):
    """A training log without its timings (wall-clock seconds differ from run to run)."""
    with open(path) as f:
        return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")} for line in f]


def test_one_thread_and_two_give_the_same_digits(background):
    one, two = background / "threads1", background / "threads2"
    for name in STAGES:
        a = dict(tensors(torch.load(one / name / "ckpt.pt", map_location="cpu", weights_only=False)))
        b = dict(tensors(torch.load(two / name / "ckpt.pt", map_location="cpu", weights_only=False)))
        assert a.keys() == b.keys() and len(a) > 10, name
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"{name}: {len(differ)} tensors differ between 1 and 2 threads, e.g. {differ[:3]}"
        assert logged(one / name / "log.jsonl") == logged(two / name / "log.jsonl"), name
    assert (one / "samples.jsonl").read_text() == (two / "samples.jsonl").read_text()


def test_cpu_ticks_reads_proc_stat(tmp_path):
    stat = tmp_path / "stat"  # cumulative ticks: user nice system idle iowait irq softirq steal [guest ...]
    stat.write_text("cpu  9 9 9 9 9 9 9 9\ncpu0 1 2 3 40 5 6 7 8 0 0\ncpu1 10 0 0 70 0 0 0 0\ncpu2 1 1 1 1 1 1 1 1\nintr 5\n")
    assert cpu_ticks([0, 1], str(stat)) == {0: (45, 72), 1: (70, 80)}


@pytest.mark.parametrize("busy, expect", [(0.0, 2), (0.3, 2), (0.6, 1), (1.0, 1)])
def test_free_cores_counts_the_idle_share_of_each_cpu(monkeypatch, busy, expect):
    """Two CPUs over 100 ticks: cpu0 idle throughout, cpu1 busy for a `busy` share of them."""
    from minirlhf import training
    readings = iter([{0: (1000, 1000), 1: (1000, 1000)}, {0: (1100, 1100), 1: (1100 - round(100 * busy), 1100)}])
    monkeypatch.setattr(training, "cpu_ticks", lambda cores: next(readings))
    assert free_cores([0, 1], window=0) == expect


if __name__ == "__main__":  # in_background's process: python tests/test_threads.py FOLDER
    for n in (1, 2):
        os.environ["OMP_NUM_THREADS"] = str(n)  # set_cpu_threads keeps the count it finds
        torch.set_num_threads(n)
        run_chain(os.path.join(sys.argv[1], f"threads{n}"))
