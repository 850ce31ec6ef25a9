"""bf16 autocast on a CPU, standing in for a GPU: one optimizer step of each training script (SFT, reward model,
PPO, DPO) with --dtype bfloat16 under MINIRLHF_CPU_AUTOCAST=1, so that a dtype mismatch shows up here before a
GPU run meets it. Each script runs with the log-prob references and with the Triton kernels themselves (in
Triton's interpreter, as a GPU would run them), with and without --fused_logprobs. Checks that the step runs,
that autocast really was on (the log-prob functions were handed bf16 logits or hidden states), and that the
bf16 step's loss is close to the fp32 step's on the same batch and weights.

CPU autocast is not CUDA's: its op lists differ (CUDA runs sum, exp, pow in fp32, for one), so a clean run here
makes a GPU dtype error unlikely, not impossible.

    python -m pytest tests/test_bf16_autocast_cpu.py -q
"""
import contextlib
import json

import pytest
import torch

from minirlhf import kernels
import train_dpo
import train_ppo
import train_rm
import train_sft
from minirlhf.checkpoint import save_checkpoint
from minirlhf.data import write_jsonl
from minirlhf.lab.make_data import make_data
from minirlhf.model import GPT, GPTConfig, ScalarGPT
from minirlhf.tokenizer import get_tokenizer
from minirlhf.training import parse_args


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Lab data (SFT rows, preference pairs made from them, prompts) and random tiny SFT and reward checkpoints."""
    d = tmp_path_factory.mktemp("bf16")
    data = make_data(seed=0, n_sft=16, n_train_per_family=1, n_eval_per_family=1)
    sft = data["sft"]
    write_jsonl(str(d / "sft.jsonl"), sft)
    write_jsonl(str(d / "prefs.jsonl"), [{"prompt": a["prompt"], "chosen": a["response"], "rejected": b["response"]}
                                         for a, b in zip(sft, sft[1:] + sft[:1])])
    write_jsonl(str(d / "prompts.jsonl"), data["prompts_train"])
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.preset("tiny", vocab_size=get_tokenizer("lab").vocab_size, block_size=64))
    save_checkpoint(str(d / "sft.pt"), gpt, stage="sft", tokenizer_name="lab")
    save_checkpoint(str(d / "rm.pt"), ScalarGPT.from_gpt(gpt), stage="rm", tokenizer_name="lab", normalised=True)
    return d


def flags(script, d, out):
    common = ["--out_dir", out, "--device", "cpu", "--seed", "3"]
    if script is train_sft:
        return common + ["--train_data", f"{d}/sft.jsonl", "--init_from", f"{d}/sft.pt", "--tokenizer", "lab",
                         "--batch_size", "4", "--micro_batch_size", "2", "--max_steps", "1"]
    if script is train_rm:
        return common + ["--train_data", f"{d}/prefs.jsonl", "--sft_ckpt", f"{d}/sft.pt", "--batch_size", "4",
                         "--micro_batch_size", "2", "--max_steps", "1", "--eval_fraction", "0",
                         "--norm_samples", "2", "--max_new_tokens", "4"]
    if script is train_ppo:
        return common + ["--prompts", f"{d}/prompts.jsonl", "--eval_prompts", "", "--sft_ckpt", f"{d}/sft.pt",
                         "--rm_ckpt", f"{d}/rm.pt", "--num_iters", "1", "--batch_size", "4",
                         "--num_minibatches", "1", "--micro_batch_size", "2", "--ppo_epochs", "1",
                         "--max_new_tokens", "4", "--log_samples", "0"]
    return common + ["--train_data", f"{d}/prefs.jsonl", "--sft_ckpt", f"{d}/sft.pt", "--batch_size", "4",
                     "--micro_batch_size", "2", "--max_steps", "1", "--eval_fraction", "0"]


LOSS = {train_sft: "train/loss", train_rm: "train/loss", train_ppo: "value/loss", train_dpo: "train/loss"}


def one_step(script, d, out, dtype, fused):
    """Run one step; returns (its log line, dtypes handed to the log-prob functions, autocast on at each call)."""
    seen, autocast_on = set(), []
    with pytest.MonkeyPatch.context() as mp:
        return _one_step(script, d, out, dtype, fused, mp, seen, autocast_on)


def _one_step(script, d, out, dtype, fused, monkeypatch, seen, autocast_on):

    def spy(name):
        fn = getattr(kernels, name)

        def wrapped(x, *args, **kwargs):
            seen.add(x.dtype)
            autocast_on.append(torch.is_autocast_enabled("cpu"))
            return fn(x, *args, **kwargs)
        monkeypatch.setattr(kernels, name, wrapped)

    spy("logprobs")
    spy("linear_logprobs")
    bt = train_rm.bradley_terry  # the reward model reads no log-probs: watch its loss instead
    monkeypatch.setattr(train_rm, "bradley_terry",
                        lambda *a: autocast_on.append(torch.is_autocast_enabled("cpu")) or bt(*a))
    extra = ["--dtype", dtype] + ([] if script is train_rm else ["--fused_logprobs", str(fused).lower()])
    script.main(parse_args(script.Args, flags(script, d, out) + extra))
    log = [json.loads(line) for line in open(f"{out}/log.jsonl")]
    return log[-1], seen, autocast_on


# (script, --fused_logprobs, Triton kernels in the interpreter): every script on the references, each log-prob
# path once through the kernels (fused and plain with backward in SFT, with the entropy in PPO's update)
CASES = [(train_sft, False, False), (train_sft, True, False), (train_sft, True, True), (train_rm, False, False),
         (train_ppo, False, False), (train_ppo, True, False), (train_ppo, False, True), (train_dpo, False, False),
         (train_dpo, True, False)]
FP32 = {}  # script -> the fp32 step's log line, run once per script


@pytest.mark.parametrize("script, fused, use_kernels", CASES,
                         ids=lambda v: v.__name__ if hasattr(v, "__name__") else str(v).lower())
def test_one_bf16_step(script, fused, use_kernels, lab, tmp_path, monkeypatch):
    if use_kernels and not kernels.INTERPRET:
        pytest.skip("the interpreter needs TRITON_INTERPRET=1 (tests/conftest.py sets it without a GPU)")
    monkeypatch.setenv("MINIRLHF_CPU_AUTOCAST", "1")
    if script not in FP32:
        FP32[script], _, on = one_step(script, lab, str(tmp_path / "fp32"), "float32", False)
        assert not any(on)  # --dtype float32: no autocast
    before = sum(kernels.stats.values())
    with kernels.triton_on_cpu() if use_kernels else contextlib.nullcontext():
        row, seen, on = one_step(script, lab, str(tmp_path / "bf16"), "bfloat16", fused)
    assert on and all(on), "bf16 autocast was not on inside the step"
    if script is not train_rm:
        assert seen == {torch.bfloat16}, seen  # under autocast the logits / hidden states arrive in bf16
    assert (sum(kernels.stats.values()) > before) == use_kernels  # the Triton kernels ran, or the references
    name, fp32 = LOSS[script], FP32[script]
    assert abs(row[name] - fp32[name]) <= 0.02 * abs(fp32[name]) + 2e-3, (row[name], fp32[name])
    if script is train_ppo:  # rollout and update log-probs: one function, same autocast
        assert row["policy/first_ratio_error"] < 0.05


def test_cpu_autocast_is_off_without_the_variable(monkeypatch):
    from minirlhf.training import Runtime

    rt = Runtime(0, 1, "cpu", True)
    monkeypatch.delenv("MINIRLHF_CPU_AUTOCAST", raising=False)
    with rt.autocast("bfloat16"):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setenv("MINIRLHF_CPU_AUTOCAST", "1")
    with rt.autocast("bfloat16"):
        assert torch.is_autocast_enabled("cpu") and torch.nn.Linear(4, 4)(torch.ones(1, 4)).dtype == torch.bfloat16
    with rt.autocast("float32"):
        assert not torch.is_autocast_enabled("cpu")
