"""LoRA inside the training scripts: one LoRA PPO iteration of train_ppo.main against a float64 reference written out
here (the adapters as W + (alpha / r) B A on plain float64 copies of the trunks, through torch.func.functional_call;
tests/test_ppo_reference.py does the same for full fine-tuning), the adapters-off reference giving the SFT model's
log-probs bit for bit inside the run, policy/first_ratio_error about 1e-6; LoRA PPO and DPO resumed equal
uninterrupted runs bit for bit; the refusals (dropout in RL, a policy that is not adapters on the SFT model).

    python -m pytest tests/test_lora_scripts.py -q
"""

import copy
import json

import pytest
import torch
from torch.func import functional_call

import train_dpo
import train_ppo
from minirlhf import lora
from minirlhf.checkpoint import load_checkpoint, load_model, save_checkpoint
from minirlhf.data import write_jsonl
from minirlhf.model import GPT, GPTConfig, ScalarGPT
from minirlhf.scoring import response_logprobs
from minirlhf.training import parse_args, step_generator
from test_ppo_reference import LENGTHS, RecordingSGD, fixed_rollout, reference_logprobs

TEMP, KL_COEF, EPS, LR, LAM, RANK, ALPHA, SEED = 0.7, 0.1, 0.02, 0.03, 0.95, 4, 6.0, 3
PROMPTS = ["Human: What is two plus two?\n\nAssistant:", "Human: Hi\n\nAssistant:",
           "Human: Name a colour that is not red.\n\nAssistant:", "Human: Why?\n\nAssistant:"]


def setup(tmp_path, dropout=0.5):
    torch.manual_seed(SEED)
    sft = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=1004, block_size=64, dropout=dropout))
    with torch.no_grad():
        sft.lm_head.weight.mul_(10)
    save_checkpoint(str(tmp_path / "sft.pt"), sft, stage="sft", tokenizer_name="lab")
    save_checkpoint(str(tmp_path / "rm.pt"), ScalarGPT.from_gpt(sft), stage="rm", tokenizer_name="lab", normalised=True)
    policy = lora.add_lora(copy.deepcopy(sft), RANK, ALPHA, base=str(tmp_path / "sft.pt"))  # round 1's adapters
    with torch.no_grad():
        for _, m in lora.lora_layers(policy):
            m.lora_B.normal_(std=0.3)
    save_checkpoint(str(tmp_path / "policy.pt"), policy, stage="ppo", tokenizer_name="lab")
    write_jsonl(str(tmp_path / "prompts.jsonl"), [{"prompt": p} for p in PROMPTS])
    return sft


def ppo_flags(d, *extra):
    return ["--prompts", f"{d}/prompts.jsonl", "--eval_prompts", "", "--sft_ckpt", f"{d}/sft.pt", "--rm_ckpt",
            f"{d}/rm.pt", "--out_dir", f"{d}/ppo", "--batch_size", "8", "--num_minibatches", "2", "--micro_batch_size",
            "2", "--ppo_epochs", "2", "--max_new_tokens", "5", "--temperature", str(TEMP), "--kl_coef", str(KL_COEF),
            "--lam", str(LAM), "--clip_range", str(EPS), "--clip_range_value", str(EPS), "--grad_clip", "0",
            "--log_samples", "0", "--seed", str(SEED), "--lora_rank", str(RANK), "--lora_alpha", str(ALPHA), *extra]


def merged(model64, state, adapters, prefix=""):
    """functional_call's parameters: W + (alpha / r) B A for every adapted layer (adapters: name -> float64 leaf)."""
    params = dict(model64.named_parameters())
    for name in adapters:
        if name.endswith("lora_A"):
            layer = name[len(prefix):-len(".lora_A")]
            params[f"{layer}.weight"] = state[f"{layer}.weight"] + (ALPHA / RANK) * (
                adapters[f"{prefix}{layer}.lora_B"] @ adapters[name])
    return params


def test_lora_ppo_iteration_matches_float64_reference(tmp_path, monkeypatch):
    sft = setup(tmp_path)
    record, optimizers, ref_seen = {}, [], []
    monkeypatch.setattr(GPT, "generate", fixed_rollout(record))
    monkeypatch.setattr(train_ppo, "adamw", lambda m, lr: optimizers.append(RecordingSGD(m, lr)) or optimizers[-1])
    real = train_ppo.response_logprobs
    monkeypatch.setattr(train_ppo, "response_logprobs", lambda model, *a, **k: ref_seen.append(real(model, *a, **k))
                        or ref_seen[-1] if isinstance(model, lora.AdaptersOff) else real(model, *a, **k))
    d = str(tmp_path)
    train_ppo.main(parse_args(train_ppo.Args, ppo_flags(d, "--num_iters", "1", "--policy_ckpt", f"{d}/policy.pt",
                                                        "--lr", str(LR), "--value_lr", str(LR))))
    tokens, mask = record["tokens"], record["mask"]
    B, T = tokens.shape
    P = T - max(LENGTHS)
    plain_sft = load_model(f"{d}/sft.pt")[0]
    ref_lp = response_logprobs(plain_sft, tokens, mask, P, TEMP)  # the SFT model itself, not a view
    assert len(ref_seen) == 4 and torch.equal(torch.cat(ref_seen) * mask[:, P:], ref_lp * mask[:, P:])
    log = [json.loads(line) for line in open(tmp_path / "ppo" / "log.jsonl")]
    assert log[0]["policy/first_ratio_error"] < 1e-5 and log[0]["objective/kl"] > 0.1

    # ---- the reference: float64 trunks, adapters as leaves starting where the script's optimizers started
    policy_opt, value_opt = optimizers
    pol64, rm64 = copy.deepcopy(sft).double().eval(), load_model(f"{d}/rm.pt")[0].double()
    pol_state, rm_state = dict(pol64.named_parameters()), dict(rm64.named_parameters())
    pa = {n: v.clone().requires_grad_(True) for n, v in policy_opt.initial.items()}
    va = {n: v.clone().requires_grad_(True) for n, v in value_opt.initial.items()}
    assert all("lora_" in n for n in pa) and {"score.weight", "score.bias"} <= set(va)
    pol = lambda t, m: functional_call(pol64, merged(pol64, pol_state, pa), (t, m))  # noqa: E731
    val = lambda t, m: functional_call(rm64, {**merged(rm64, rm_state, va, "trunk."), "score.weight": va["score.weight"],
                                              "score.bias": va["score.bias"]}, (t, m))  # noqa: E731
    valid = mask[:, P:].double()
    n = [int(v.sum()) for v in valid]
    with torch.no_grad():
        old_lp = reference_logprobs(pol, tokens, mask, P) * valid
        ref64 = reference_logprobs(pol64, tokens, mask, P) * valid
        old_v = val(tokens, mask)[:, P - 1: T - 1].double() * valid
        r_all = rm64(tokens, mask).double()  # the reward: the trunk without adapters, the reward head
    rewards = torch.zeros(B, T - P, dtype=torch.float64)
    for b in range(B):
        score = r_all[b, P + n[b] - 1].item() if b > 0 else -3.0  # row 0 never ends: no_eos_score
        rewards[b, :n[b]] = -KL_COEF * (old_lp[b, :n[b]] - ref64[b, :n[b]])
        rewards[b, n[b] - 1] += score
    adv = torch.zeros_like(rewards)
    for b in range(B):
        running = 0.0
        for t in reversed(range(n[b])):
            next_v = old_v[b, t + 1].item() if t + 1 < n[b] else 0.0
            running = rewards[b, t].item() + next_v - old_v[b, t].item() + LAM * running
            adv[b, t] = running
    returns = adv + old_v
    flat = adv[valid.bool()]
    white = (adv - flat.mean()) / (flat.var() + 1e-8).sqrt() * valid
    step = 0
    for epoch in range(2):
        for mb in torch.randperm(B, generator=step_generator(SEED + 1, epoch, 0)).split(4):
            m = valid[mb]
            ratio = torch.exp(reference_logprobs(pol, tokens[mb], mask[mb], P) * m - old_lp[mb])
            pg = torch.maximum(-white[mb] * ratio, -white[mb] * ratio.clamp(1 - EPS, 1 + EPS))
            v = val(tokens[mb], mask[mb])[:, P - 1: T - 1].double()
            v_clip = old_v[mb] + (v - old_v[mb]).clamp(-EPS, EPS)
            vf = torch.maximum((v - returns[mb]) ** 2, (v_clip - returns[mb]) ** 2)
            ((pg * m).sum() / m.sum() + 0.5 * (vf * m).sum() / m.sum()).backward()
            for leaves, opt, what in ((pa, policy_opt, "policy"), (va, value_opt, "value")):
                got = torch.cat([g.flatten() for g in opt.grads[step]])
                want = torch.cat([leaves[n].grad.flatten() for n in opt.names])
                err = (got - want).norm() / want.norm()
                assert err < 1e-4, f"step {step}, {what} adapters' gradient: relative error {err:.2e}"
                with torch.no_grad():
                    for leaf in leaves.values():
                        leaf -= LR * leaf.grad
                        leaf.grad = None
            step += 1
    assert step == len(policy_opt.grads) == 4


def test_lora_ppo_and_dpo_resume_bit_exact(tmp_path):
    setup(tmp_path, dropout=0.0)
    d = str(tmp_path)
    write_jsonl(f"{d}/prefs.jsonl", [{"prompt": p, "chosen": " Four.", "rejected": " Five."} for p in PROMPTS * 2])
    dpo = lambda out, steps, *x: train_dpo.main(parse_args(train_dpo.Args, [  # noqa: E731
        "--train_data", f"{d}/prefs.jsonl", "--eval_fraction", "0", "--sft_ckpt", f"{d}/sft.pt", "--out_dir", out,
        "--batch_size", "4", "--micro_batch_size", "2", "--max_steps", str(steps), "--lr", "1e-2", "--log_interval", "1",
        "--lora_rank", str(RANK), "--lora_alpha", str(ALPHA), *x]))
    ppo = lambda out, iters, *x: train_ppo.main(parse_args(train_ppo.Args, ppo_flags(  # noqa: E731
        d, "--out_dir", out, "--num_iters", str(iters), "--ckpt_interval", "1", "--lr", "1e-2", *x)))
    for name, run in (("ppo", ppo), ("dpo", dpo)):
        run(f"{d}/{name}_straight", 3)
        run(f"{d}/{name}_stopped", 2)
        run(f"{d}/{name}_stopped", 3, "--resume", "true")
        a, b = load_checkpoint(f"{d}/{name}_straight/ckpt.pt"), load_checkpoint(f"{d}/{name}_stopped/ckpt.pt")
        assert set(a["model"]) == {n for n in a["model"] if "lora_" in n}  # the adapters alone
        for key in ("model", "value_model") if run is ppo else ("model",):
            assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
        assert not all(torch.equal(v, torch.zeros_like(v)) for k, v in a["model"].items() if k.endswith("lora_B"))
        assert type(load_model(f"{d}/{name}_straight/ckpt.pt")[0]) is GPT  # every reader gets the merged model


def test_rl_refuses_dropout_and_a_policy_that_is_not_adapters_on_sft(tmp_path):
    setup(tmp_path)
    d = str(tmp_path)
    with pytest.raises(SystemExit):  # argparse: RL scripts have no --lora_dropout at all
        parse_args(train_ppo.Args, ppo_flags(d, "--lora_dropout", "0.1"))
    with pytest.raises(ValueError, match="adapters off"):
        train_ppo.main(parse_args(train_ppo.Args, ppo_flags(d, "--num_iters", "1", "--policy_ckpt", f"{d}/sft.pt")))
