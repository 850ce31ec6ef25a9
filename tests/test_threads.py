"""A lab run gives the same digits on one CPU thread as on two, so the thread count can follow the free cores.

    python -m pytest tests/test_threads.py -q

training.set_cpu_threads gives a stage two threads on a quiet 2-core machine and one beside a busy core. That
is only safe if nothing a run writes depends on the count. Two things make it so: MKL's strict reproducible
mode for matmuls (minirlhf/__init__.py) and model.LayerNorm (torch's fused LayerNorm backward sums the gain's
gradient in one piece per thread). Here the lab's chain (SFT on the lab's `small` model at the quick start's
batch, samples, labels, reward model, PPO, the report) runs on one thread and again on two, and every weight,
optimizer moment, log value and report number must be identical.
"""

import json

import pytest
import torch

import train_ppo
import train_rm
import train_sft
from minirlhf.data import write_jsonl
from minirlhf.lab import annotate, evaluate
from minirlhf.lab.make_data import make_data
from minirlhf.training import cpu_ticks, free_cores, parse_args


def run_chain(d, threads, monkeypatch):
    """The lab chain in d on `threads` threads; returns the checkpoints, the logs (less timings) and the report."""
    monkeypatch.setenv("OMP_NUM_THREADS", str(threads))  # set_cpu_threads keeps what it finds
    torch.set_num_threads(threads)
    data = make_data(seed=0, n_sft=256, n_train_per_family=8, n_eval_per_family=2)
    for name, rows in data.items():
        write_jsonl(str(d / f"{name}.jsonl"), rows)
    train_sft.main(parse_args(train_sft.Args, [
        "--train_data", f"{d}/sft.jsonl", "--out_dir", f"{d}/sft", "--init_from", "scratch:small",
        "--batch_size", "32", "--micro_batch_size", "32", "--max_steps", "4", "--lr", "2e-3"]))
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
    evaluate.main([f"SFT={d}/sft/ckpt.pt", f"PPO={d}/ppo/ckpt.pt", "--rm", f"{d}/rm/ckpt.pt", "--ref",
                   f"{d}/sft/ckpt.pt", "--prompts", f"{d}/prompts_eval.jsonl", "--samples_per_prompt", "2",
                   "--json", f"{d}/report.json"])
    stages = ("sft", "rm", "ppo")
    ckpts = {s: torch.load(d / s / "ckpt.pt", map_location="cpu", weights_only=False) for s in stages}
    logs = {s: [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
                for line in open(d / s / "log.jsonl")] for s in stages}
    return ckpts, logs, json.loads((d / "report.json").read_text())


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


def test_one_thread_and_two_give_the_same_digits(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    try:
        runs = {n: run_chain(tmp_path / f"threads{n}", n, monkeypatch) for n in (1, 2)}
    finally:
        torch.set_num_threads(before)
    (ckpts1, logs1, report1), (ckpts2, logs2, report2) = runs[1], runs[2]
    for stage in ckpts1:
        one, two = dict(tensors(ckpts1[stage])), dict(tensors(ckpts2[stage]))
        assert one.keys() == two.keys() and len(one) > 10, stage
        differ = [k for k in one if not torch.equal(one[k], two[k])]
        assert not differ, f"{stage}: {len(differ)} tensors differ between 1 and 2 threads, e.g. {differ[:3]}"
    assert logs1 == logs2
    assert report1 == report2
    assert report1["PPO"]["gold"] != report1["SFT"]["gold"]  # the chain did train


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
