"""The real-data path on a GPT-2-shaped model, offline, on CPU: what the runs/ walkthrough does, in seconds.

    python -m pytest tests/test_real_data.py -q

- The HH-RLHF fixtures (tests/fixtures/hh_rlhf/, upstream format) go through data/hh_rlhf/prepare.py. A
  `transformers` GPT2LMHeadModel with random weights (2 layers, 64 wide, GPT-2's 50257-token vocabulary) is
  written with save_pretrained, as a downloaded GPT-2 is, and `--init_from <that folder> --tokenizer gpt2` starts
  SFT; then the reward model and PPO, two steps each, in-process, handing off by checkpoint.
- The fused linear log-prob path (--fused_logprobs true) gives the unfused path's log-probs, entropy and
  gradients: on the reference path, through a DDP wrapper (one gloo rank, two steps, so an unsynchronised
  parameter would raise), and with the Triton kernel in the interpreter.
- Every flags file under runs/ parses with its script's options, and the stages of each configuration hand off.
"""

import glob
import importlib.util
import json
import math
import os

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from minirlhf import kernels
import train_ppo
import train_rm
import train_sft
from minirlhf.checkpoint import load_checkpoint
from minirlhf.model import GPT, GPTConfig
from minirlhf.scoring import response_logprobs
from minirlhf.training import parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"sft": train_sft, "rm": train_rm, "ppo": train_ppo}
RUNS = sorted(glob.glob(os.path.join(ROOT, "runs", "*", "*.args")))


def load_prepare():
    spec = importlib.util.spec_from_file_location("prepare_hh", os.path.join(ROOT, "data", "hh_rlhf", "prepare.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hh(tmp_path_factory):
    """Converted HH fixtures and a random GPT-2-shaped Hugging Face folder, in one temporary directory."""
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hh")
    load_prepare().main(["--source", os.path.join(ROOT, "tests", "fixtures", "hh_rlhf"), "--out_dir", str(d)])
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50257, n_positions=256, n_embd=64, n_layer=2, n_head=4)
    transformers.GPT2LMHeadModel(config).save_pretrained(str(d / "gpt2-tiny"))
    return d


def test_sft_rm_ppo_on_hh_from_a_gpt2_folder(hh, tmp_path):
    small = ["--batch_size", "4", "--micro_batch_size", "2", "--max_steps", "2", "--warmup_steps", "1"]
    train_sft.main(parse_args(train_sft.Args, small + [
        "--tokenizer", "gpt2", "--init_from", str(hh / "gpt2-tiny"), "--train_data", f"{hh}/sft_train.jsonl",
        "--eval_data", f"{hh}/sft_test.jsonl", "--out_dir", f"{tmp_path}/sft", "--lr", "1e-3"]))
    sft = load_checkpoint(f"{tmp_path}/sft/ckpt.pt", expect="gpt")
    assert sft["tokenizer"] == "gpt2" and sft["step"] == 2
    assert sft["model_args"]["vocab_size"] == 50258 and sft["model_args"]["block_size"] == 256  # + pad; n_positions

    train_rm.main(parse_args(train_rm.Args, small + [
        "--sft_ckpt", f"{tmp_path}/sft/ckpt.pt", "--train_data", f"{hh}/prefs_train.jsonl",
        "--eval_data", f"{hh}/prefs_test.jsonl", "--out_dir", f"{tmp_path}/rm", "--norm_samples", "4",
        "--max_new_tokens", "4"]))
    rm = load_checkpoint(f"{tmp_path}/rm/ckpt.pt", expect="scalar")
    assert rm["normalised"] and rm["tokenizer"] == "gpt2" and math.isfinite(rm["reward_std"])

    train_ppo.main(parse_args(train_ppo.Args, [
        "--prompts", f"{hh}/prompts_train.jsonl", "--sft_ckpt", f"{tmp_path}/sft/ckpt.pt",
        "--rm_ckpt", f"{tmp_path}/rm/ckpt.pt", "--out_dir", f"{tmp_path}/ppo", "--num_iters", "2",
        "--batch_size", "4", "--num_minibatches", "2", "--micro_batch_size", "1", "--ppo_epochs", "1",
        "--max_prompt_len", "64", "--max_new_tokens", "4", "--fused_logprobs", "true"]))
    log = [json.loads(line) for line in open(tmp_path / "ppo" / "log.jsonl")]
    assert [row["step"] for row in log] == [1, 2] and "lab/gold" not in log[0]  # HH prompts: no gold judge
    for row in log:
        assert row["policy/first_ratio_error"] < 1e-5  # the fused path in rollout and update alike
        for key in ("objective/rm_score", "objective/kl", "policy/entropy", "value/explained_var"):
            assert math.isfinite(row[key]), key
    assert load_checkpoint(f"{tmp_path}/ppo/ckpt.pt", expect="gpt")["stage"] == "ppo"


# ----------------------------------------------------------------------------- fused == unfused


def inputs(vocab, pad):
    """Three rows of 10 tokens, the second left-padded by 3; response from position 4; a random upstream grad."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(vocab - 1, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, :3] = 0
    tokens[1, :3] = pad
    return tokens, mask, torch.randn(3, 6, generator=g)


def logprobs_and_grads(model, call, fused, tokens, mask, upstream):
    model.zero_grad(set_to_none=True)
    logprobs, entropy = response_logprobs(call, tokens, mask, 4, temperature=0.7, return_entropy=True, fused=fused)
    (logprobs * upstream).sum().backward()
    return logprobs.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same(a, b):
    for x, y in zip(a[:2], b[:2]):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        torch.testing.assert_close(a[2][name], b[2][name], atol=1e-6, rtol=1e-4, msg=name)


def test_fused_logprobs_match_unfused_on_gpt2_shapes(hh):
    model = GPT.from_pretrained(str(hh / "gpt2-tiny"), vocab_size=50258)
    tokens, mask, upstream = inputs(50257, 50257)
    assert_same(logprobs_and_grads(model, model, False, tokens, mask, upstream),
                logprobs_and_grads(model, model, True, tokens, mask, upstream))


def test_fused_logprobs_through_ddp(hh, tmp_path):
    model = GPT.from_pretrained(str(hh / "gpt2-tiny"), vocab_size=50258)
    tokens, mask, upstream = inputs(50257, 50257)
    want = logprobs_and_grads(model, model, False, tokens, mask, upstream)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        ddp = DDP(model)
        for _ in range(2):  # DDP raises on the second step if a parameter's gradient never reached its reducer
            assert_same(want, logprobs_and_grads(model, ddp, True, tokens, mask, upstream))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not kernels.INTERPRET, reason="needs TRITON_INTERPRET=1 (set by conftest.py without a GPU)")
def test_fused_logprobs_with_the_triton_kernel():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=97))
    tokens, mask, upstream = inputs(97, 96)
    want = logprobs_and_grads(model, model, False, tokens, mask, upstream)
    launches = kernels.stats["linear_logprobs_bwd"]
    with kernels.triton_on_cpu():
        got = logprobs_and_grads(model, model, True, tokens, mask, upstream)
    assert kernels.stats["linear_logprobs_bwd"] == launches + 1
    assert_same(want, got)


# ----------------------------------------------------------------------------- runs/ flags files


def test_every_configuration_has_its_three_stages():
    dirs = sorted({os.path.dirname(p) for p in RUNS})
    assert len(dirs) >= 4
    for d in dirs:
        assert sorted(os.listdir(d)) == ["ppo.args", "rm.args", "sft.args"], d


@pytest.mark.parametrize("path", RUNS, ids=lambda p: os.path.relpath(p, os.path.join(ROOT, "runs")))
def test_flags_file_parses(path):
    stage = os.path.basename(path).removesuffix(".args")
    args = parse_args(SCRIPTS[stage].Args, ["@" + path])
    if stage == "ppo":  # batch -> minibatches -> micro-batches, and prompt + response within GPT-2's context
        minibatch = args.batch_size // args.num_minibatches
        assert args.batch_size % args.num_minibatches == 0 and minibatch % args.micro_batch_size == 0
        assert args.max_prompt_len + args.max_new_tokens <= 1024
    else:
        assert args.batch_size % args.micro_batch_size == 0
    if stage == "sft":
        assert args.tokenizer == "gpt2" and args.init_from in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


@pytest.mark.parametrize("config", sorted({os.path.dirname(p) for p in RUNS}), ids=os.path.basename)
def test_stages_of_a_configuration_hand_off(config):
    sft, rm, ppo = (parse_args(SCRIPTS[s].Args, ["@" + os.path.join(config, f"{s}.args")])
                    for s in ("sft", "rm", "ppo"))
    assert rm.sft_ckpt == ppo.sft_ckpt == f"{sft.out_dir}/ckpt.pt"
    assert ppo.rm_ckpt == f"{rm.out_dir}/ckpt.pt"
    # the reward model is normalised on samples drawn the way PPO will draw them
    assert rm.norm_temperature == ppo.temperature and rm.max_new_tokens == ppo.max_new_tokens
    assert len({sft.out_dir, rm.out_dir, ppo.out_dir}) == 3 and os.path.basename(config) in sft.out_dir
