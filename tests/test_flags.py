"""Bad flags are refused before any work, with a message naming the flag (minirlhf/flags.py): every training
script's ranges (declared in its Args with opt(..., gt=0) and the like), the one micro-batch check shared by the
four scripts (split_batch), the lab's commands and quickstart.py; and the CPU thread count chosen from the work.

    python -m pytest tests/test_flags.py -q
"""

import os
import sys

import pytest
import torch

import quickstart
import train_dpo
import train_ppo
import train_rm
import train_sft
from minirlhf.lab import annotate, evaluate, make_data
from minirlhf.flags import split_batch
from minirlhf.training import parse_args, set_cpu_threads

# (script, flag, bad value): each was accepted (or failed with an unrelated error) before the ranges were declared
BAD = [
    (train_ppo, "kl_coef", "-0.1"), (train_dpo, "beta", "-0.1"), (train_dpo, "beta", "0"),
    (train_sft, "max_steps", "0"), (train_rm, "max_steps", "-5"), (train_dpo, "eval_fraction", "-0.5"),
    (train_rm, "eval_fraction", "1.0"), (train_sft, "batch_size", "0"), (train_ppo, "batch_size", "0"),
    (train_rm, "micro_batch_size", "0"), (train_sft, "ckpt_interval", "0"), (train_ppo, "num_minibatches", "0"),
    (train_ppo, "temperature", "0"), (train_ppo, "temperature", "-1"), (train_ppo, "max_new_tokens", "0"),
    (train_rm, "norm_samples", "1"), (train_sft, "lr", "nan"), (train_ppo, "gamma", "1.5"),
    (train_dpo, "loss", "ipx"), (train_sft, "dtype", "float8"), (train_ppo, "ppo_epochs", "0"),
]


@pytest.mark.parametrize("script,flag,value", BAD, ids=[f"{s.__name__}--{f}={v}" for s, f, v in BAD])
def test_training_flag_out_of_range_is_refused_by_name(script, flag, value, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        parse_args(script.Args, [f"--{flag}", value, "--out_dir", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--{flag}" in err and value in err, err
    assert not (tmp_path / "out").exists()  # nothing was created


def test_good_flags_pass():
    args = parse_args(train_ppo.Args, ["--kl_coef", "0", "--gamma", "1", "--temperature", "0.7"])
    assert args.kl_coef == 0.0 and args.gamma == 1.0


# batch sizes that used to run a different micro-batch than asked for (48 with 32 ran one of 48; 40 with 16 ran
# two of 20), or did not split into minibatches
@pytest.mark.parametrize("script,argv", [
    (train_sft, ["--batch_size", "48", "--micro_batch_size", "32"]),
    (train_rm, ["--batch_size", "40", "--micro_batch_size", "16"]),
    (train_dpo, ["--batch_size", "40", "--micro_batch_size", "16"]),
    (train_ppo, ["--batch_size", "64", "--num_minibatches", "3"]),
    (train_ppo, ["--batch_size", "64", "--num_minibatches", "4", "--micro_batch_size", "5"]),
])
def test_micro_batch_mismatch_is_refused_in_all_four_scripts(script, argv, capsys):
    with pytest.raises(SystemExit):
        parse_args(script.Args, argv)
    assert "--batch_size" in capsys.readouterr().err


def test_split_batch():
    assert split_batch(64, 16) == (64, 64, 16)
    assert split_batch(64, 64) == (64, 64, 64)
    assert split_batch(32, 64) == (32, 32, 32)  # a micro-batch larger than the batch: the batch, in one
    assert split_batch(64, 16, world_size=2, num_minibatches=4) == (32, 8, 8)
    assert split_batch(64, 4, world_size=2, num_minibatches=4) == (32, 8, 4)
    for bad in [(48, 32), (40, 16), (9, 4, 2), (64, 16, 1, 3), (64, 3, 1, 4)]:
        with pytest.raises(ValueError, match="--batch_size"):
            split_batch(*bad)


@pytest.mark.parametrize("main,argv,flag", [
    (annotate.main, ["sample", "--ckpt", "x", "--prompts", "y", "--out", "z", "--k", "1"], "--k"),
    (annotate.main, ["sample", "--ckpt", "x", "--prompts", "y", "--out", "z", "--temperature", "0"], "--temperature"),
    (annotate.main, ["label", "--samples", "x", "--out", "y", "--flip_rate", "1.5"], "--flip_rate"),
    (evaluate.main, ["x.pt", "--max_new_tokens", "0"], "--max_new_tokens"),
    (evaluate.main, ["x.pt", "--batch_size", "0"], "--batch_size"),
    (make_data.main, ["--eval_frac", "1"], "--eval_frac"),
    (make_data.main, ["--n_sft", "0"], "--n_sft"),
])
def test_lab_command_flag_out_of_range_is_refused_by_name(main, argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize("argv,flag", [(["--rounds", "0"], "--rounds"), (["--kl_coef", "-1"], "--kl_coef"),
                                       (["--samples_per_prompt", "1"], "--samples_per_prompt"),
                                       (["--model", "huge"], "--model"), (["--ppo_iters", "0"], "--ppo_iters")])
def test_quickstart_flag_out_of_range_is_refused_by_name(argv, flag, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["quickstart.py", "--out_dir", str(tmp_path / "qs"), *argv])
    with pytest.raises(SystemExit):
        quickstart.main()
    assert flag in capsys.readouterr().err and not (tmp_path / "qs").exists()


def test_cpu_threads_chosen_from_the_work_and_the_free_cores(monkeypatch):
    from minirlhf import training
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    free = {"n": 8}
    monkeypatch.setattr(training, "free_cores", lambda cores: min(free["n"], len(cores)))
    try:
        assert set_cpu_threads(1_000_000) == 2 == torch.get_num_threads()  # a lab model: two threads
        assert set_cpu_threads(124_000_000) == 8  # a big model: every core
        free["n"] = 1  # the other cores busy: a lab model takes one (the same digits: tests/test_threads.py)
        assert (set_cpu_threads(1_000_000), set_cpu_threads(124_000_000)) == (1, 8)
        monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: False)  # no MKL: the count the machine has
        assert (set_cpu_threads(1_000_000), set_cpu_threads(124_000_000)) == (2, 8)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
        assert (set_cpu_threads(1_000_000), set_cpu_threads(124_000_000)) == (1, 1)  # one core: one thread
        assert set_cpu_threads(1_000_000, requested=3) == 3 == torch.get_num_threads()  # --threads wins
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert set_cpu_threads(124_000_000) == 1  # so does OMP_NUM_THREADS
    finally:
        torch.set_num_threads(before)
