"""DDP on CPU: two processes (gloo) under torchrun.

    python -m pytest tests/test_ddp.py -q

SFT with 2 ranks x 4 examples must end where one process ends with the same 8 examples per step as 2 x 4
micro-batches (DDP averages gradients over ranks exactly as accumulation sums them over micro-batches), and
PPO's ranks, which sample different prompts, must keep identical weights.
"""

import os
import subprocess
import sys

import pytest
import torch

import train_sft
from minirlhf.checkpoint import load_checkpoint, load_model, save_checkpoint
from minirlhf.data import write_jsonl
from minirlhf.lab.make_data import make_data
from minirlhf.model import ScalarGPT
from minirlhf.training import parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torchrun(script, flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, *flags]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    for name, rows in make_data(seed=0, n_sft=96, n_train_per_family=4, n_eval_per_family=1).items():
        write_jsonl(str(d / f"{name}.jsonl"), rows)
    return d


def sft_flags(d, out):
    return ["--train_data", f"{d}/sft.jsonl", "--out_dir", out, "--init_from", "scratch:tiny", "--block_size", "96",
            "--batch_size", "8", "--micro_batch_size", "4", "--max_steps", "4", "--log_interval", "1"]


def test_ddp_sft_equals_single_process_with_accumulation(data):
    stdout = torchrun("train_sft.py", sft_flags(data, f"{data}/sft_ddp"))
    assert "ranks in sync: 2 ranks" in stdout
    train_sft.main(parse_args(train_sft.Args, sft_flags(data, f"{data}/sft_single")))
    ddp = load_checkpoint(f"{data}/sft_ddp/ckpt.pt")["model"]
    single = load_checkpoint(f"{data}/sft_single/ckpt.pt")["model"]
    for key in single:  # equal up to the order of floating-point sums
        assert torch.allclose(ddp[key], single[key], atol=1e-5, rtol=1e-4), key


def test_ddp_ppo_ranks_stay_in_sync(data):
    if not os.path.exists(f"{data}/sft_single/ckpt.pt"):
        train_sft.main(parse_args(train_sft.Args, sft_flags(data, f"{data}/sft_single")))
    sft, tok, _ = load_model(f"{data}/sft_single/ckpt.pt")
    save_checkpoint(f"{data}/rm.pt", ScalarGPT.from_gpt(sft), stage="rm", tokenizer_name=tok.name, normalised=True)
    stdout = torchrun("train_ppo.py", [
        "--prompts", f"{data}/prompts_train.jsonl", "--eval_prompts", "", "--sft_ckpt", f"{data}/sft_single/ckpt.pt",
        "--rm_ckpt", f"{data}/rm.pt", "--out_dir", f"{data}/ppo", "--num_iters", "2", "--batch_size", "8",
        "--num_minibatches", "2", "--micro_batch_size", "1", "--ppo_epochs", "2", "--max_new_tokens", "6",
        "--log_samples", "0"])
    assert "ranks in sync: 2 ranks" in stdout
    assert load_checkpoint(f"{data}/ppo/ckpt.pt")["step"] == 2
