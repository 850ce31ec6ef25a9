"""One PPO iteration of train_ppo.main against a float64 reference written out here, formula by formula.

    python -m pytest tests/test_ppo_reference.py -q

The setup makes the easy-to-get-wrong details visible: dropout 0.5 in every model (train mode would change every
number), a policy that differs from the reference (the KL penalty is not 0), left-padded prompts of different
lengths, responses of uneven lengths with one that never ends (no_eos_score), two micro-batches of different
token counts per minibatch (a mean of micro-batch means differs from the minibatch's token mean), and a clip
range small enough that the ratio leaves it on both sides after the first step. The optimizers are replaced by
plain SGD that records each gradient, so every gradient the script computes is compared with the float64
gradient of the reference loss; adaptive_kl is on and the new kl_coef is checked against Ziegler's formula.
Only the models' forward pass is shared with the code under test (tests/test_model.py checks it against GPT-2).
"""

import copy
import json
import math

import torch

import train_ppo
from minirlhf.checkpoint import save_checkpoint, load_checkpoint
from minirlhf.data import write_jsonl
from minirlhf.model import GPT, GPTConfig, ScalarGPT
from minirlhf.training import parse_args, step_generator

EOT, PAD, TEMP, KL_COEF, EPS, EPS_V, NO_EOS, LR, GAMMA, LAM = 1002, 1003, 0.7, 0.1, 0.02, 0.02, -3.0, 0.3, 1.0, 0.95
LENGTHS = [5, 3, 1, 4, 2, 5, 2, 4]  # response lengths; row 0 never ends (no end-of-text within 5 tokens)
SEED, TARGET_KL = 3, 3.8


class RecordingSGD:
    """Stands in for AdamW on what requires grad: p -= lr * grad; keeps the parameters' names, their initial values
    and a float64 copy of every gradient it was given (tests/test_lora_scripts.py uses it too)."""

    def __init__(self, model, lr, weight_decay=0.0):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names, self.params, self.lr, self.grads = [n for n, _ in named], [p for _, p in named], lr, []
        self.initial = {n: p.detach().double().clone() for n, p in named}

    def step(self):
        self.grads.append([p.grad.double().clone() for p in self.params])
        with torch.no_grad():
            for p in self.params:
                p -= self.lr * p.grad

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def state_dict(self):
        return {}


def fixed_rollout(record):
    """A generate() that appends fixed responses of LENGTHS (random tokens, end-of-text last except in row 0)."""
    def generate(self, idx, attention_mask, max_new_tokens, *, eos_token_id, pad_token_id, **_):
        g = torch.Generator().manual_seed(7)
        R = max(LENGTHS)
        resp = torch.full((idx.size(0), R), pad_token_id)
        for b, n in enumerate(LENGTHS):
            resp[b, :n] = torch.randint(1000, (n,), generator=g)
            if b > 0:
                resp[b, n - 1] = eos_token_id
        tokens = torch.cat([idx, resp], 1)
        mask = torch.cat([attention_mask.bool(), resp != pad_token_id], 1)
        record.update(tokens=tokens, mask=mask)
        return tokens, mask
    return generate


def reference_logprobs(model, tokens, mask, P):
    """log softmax(logits / T) of a plain full forward: position t - 1 scores token t."""
    logits = model(tokens, mask).double() / TEMP
    lp = torch.log_softmax(logits, -1)
    B, T = tokens.shape
    return torch.stack([torch.stack([lp[b, t - 1, tokens[b, t]] for t in range(P, T)]) for b in range(B)])


def test_one_ppo_iteration_matches_a_float64_reference(tmp_path, monkeypatch):
    torch.manual_seed(SEED)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=1004, block_size=64, dropout=0.5)
    sft = GPT(cfg)
    with torch.no_grad():
        sft.lm_head.weight.mul_(10)  # peaked next-token distributions, not near-uniform ones
    policy = copy.deepcopy(sft)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the policy has moved away from the reference: KL > 0
    rm = ScalarGPT.from_gpt(sft)
    for path, model in (("sft.pt", sft), ("policy.pt", policy), ("rm.pt", rm)):
        save_checkpoint(str(tmp_path / path), model, stage="test", tokenizer_name="lab", normalised=True)
    prompts = ["Human: What is two plus two?\n\nAssistant:", "Human: Hi\n\nAssistant:",
               "Human: Name a colour that is not red.\n\nAssistant:", "Human: Why?\n\nAssistant:"]
    write_jsonl(str(tmp_path / "prompts.jsonl"), [{"prompt": p} for p in prompts])

    record, optimizers = {}, []
    monkeypatch.setattr(GPT, "generate", fixed_rollout(record))
    monkeypatch.setattr(train_ppo, "adamw", lambda m, lr: optimizers.append(RecordingSGD(m, lr)) or optimizers[-1])
    d = str(tmp_path)
    train_ppo.main(parse_args(train_ppo.Args, [
        "--prompts", f"{d}/prompts.jsonl", "--eval_prompts", "", "--sft_ckpt", f"{d}/sft.pt", "--policy_ckpt",
        f"{d}/policy.pt", "--rm_ckpt", f"{d}/rm.pt", "--out_dir", f"{d}/ppo", "--num_iters", "1", "--batch_size", "8",
        "--num_minibatches", "2", "--micro_batch_size", "2", "--ppo_epochs", "2", "--max_new_tokens", "5",
        "--temperature", str(TEMP), "--lr", str(LR), "--value_lr", str(LR), "--kl_coef", str(KL_COEF),
        "--adaptive_kl", "true", "--target_kl", str(TARGET_KL), "--kl_horizon", "16", "--gamma", str(GAMMA),
        "--lam", str(LAM), "--clip_range", str(EPS), "--clip_range_value", str(EPS_V), "--no_eos_score", str(NO_EOS),
        "--grad_clip", "0", "--log_samples", "0", "--seed", str(SEED)]))

    # ---- the reference, part 1: the rollout's numbers, on float64 copies of the models in eval mode
    f64 = lambda model: copy.deepcopy(model).double().eval()  # noqa: E731
    pol, ref, val, rwd = f64(policy), f64(sft), f64(rm), f64(rm)
    tokens, mask = record["tokens"], record["mask"]
    B, T = tokens.shape
    P = T - max(LENGTHS)
    valid = mask[:, P:].double()
    n = [int(valid[b].sum()) for b in range(B)]
    assert n == LENGTHS

    with torch.no_grad():
        old_lp = reference_logprobs(pol, tokens, mask, P) * valid
        ref_lp = reference_logprobs(ref, tokens, mask, P) * valid
        old_v = val(tokens, mask)[:, P - 1: T - 1].double() * valid
        r_all = rwd(tokens, mask).double()
    rewards = torch.zeros(B, T - P, dtype=torch.float64)
    seq_kl = []
    for b in range(B):
        last = max(t for t in range(T) if mask[b, t])  # the last real token
        ended = EOT in tokens[b, P: P + n[b]].tolist()
        score = r_all[b, last].item() if ended else NO_EOS
        kl = [(old_lp[b, t] - ref_lp[b, t]).item() for t in range(n[b])]
        seq_kl.append(sum(kl))
        for t in range(n[b]):
            rewards[b, t] = -KL_COEF * kl[t] + (score if t == n[b] - 1 else 0.0)
    adv = torch.zeros_like(rewards)
    for b in range(B):
        running = 0.0
        for t in reversed(range(n[b])):
            next_v = old_v[b, t + 1].item() if t + 1 < n[b] else 0.0
            running = rewards[b, t].item() + GAMMA * next_v - old_v[b, t].item() + GAMMA * LAM * running
            adv[b, t] = running
    returns = adv + old_v  # before whitening
    flat = [adv[b, t].item() for b in range(B) for t in range(n[b])]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((x - mean) ** 2 for x in flat) / (len(flat) - 1) + 1e-8)
    white = (adv - mean) / std * valid

    # ---- part 2: the update, minibatch by minibatch, on the float64 copies, with SGD as in RecordingSGD
    for model in (pol, val):
        for p in model.parameters():
            p.requires_grad_(True)
    expected_grads, clipped_low, clipped_high, step = ([], []), 0, 0, 0
    policy_opt, value_opt = optimizers
    for epoch in range(2):
        order = torch.randperm(B, generator=step_generator(SEED + 1, epoch, 0))
        for mb in order.split(4):
            m = valid[mb]
            n_valid = m.sum()
            ratio = torch.exp(reference_logprobs(pol, tokens[mb], mask[mb], P) * m - old_lp[mb])
            a = white[mb]
            pg = torch.maximum(-a * ratio, -a * ratio.clamp(1 - EPS, 1 + EPS))
            v = val(tokens[mb], mask[mb])[:, P - 1: T - 1].double()
            v_clip = old_v[mb] + (v - old_v[mb]).clamp(-EPS_V, EPS_V)
            vf = torch.maximum((v - returns[mb]) ** 2, (v_clip - returns[mb]) ** 2)
            loss = (pg * m).sum() / n_valid + 0.5 * (vf * m).sum() / n_valid  # the minibatch's token mean
            # tokens where the clipped term is the one kept (the update stops there): A > 0 above, A < 0 below
            clipped_high += int(((ratio > 1 + EPS) & (a > 0) & (m > 0)).sum())
            clipped_low += int(((ratio < 1 - EPS) & (a < 0) & (m > 0)).sum())
            loss.backward()
            for i, (model, opt) in enumerate(((pol, policy_opt), (val, value_opt))):
                got = torch.cat([g.flatten() for g in opt.grads[step]])
                want = torch.cat([p.grad.flatten() for p in model.parameters()])
                err = (got - want).norm() / want.norm()
                assert err < 1e-4, f"step {step}, {'policy' if i == 0 else 'value'} gradient: relative error {err:.2e}"
                with torch.no_grad():
                    for p in model.parameters():
                        p -= LR * p.grad
                        p.grad = None
            step += 1
    assert step == len(policy_opt.grads) == 4
    assert clipped_low > 0 and clipped_high > 0, (clipped_low, clipped_high)  # the setup clips on both sides

    # ---- logged numbers: ratio exactly 1 on the first minibatch, the sequence KL, Ziegler's controller
    log = [json.loads(line) for line in open(tmp_path / "ppo" / "log.jsonl")]
    mean_kl = sum(seq_kl) / B
    assert abs(mean_kl) > 0.1
    assert log[0]["policy/first_ratio_error"] < 1e-5
    assert abs(log[0]["objective/kl"] - mean_kl) < 1e-4 * max(1, abs(mean_kl))
    error = mean_kl / TARGET_KL - 1  # Ziegler's proportional controller, clipped to +-0.2; horizon 16 rollouts
    assert 0.02 < abs(error) < 0.2, mean_kl  # the setup keeps the error away from 0 and inside the clip
    new_coef = load_checkpoint(str(tmp_path / "ppo" / "ckpt.pt"))["kl_coef"]
    assert abs(new_coef - KL_COEF * (1 + error * 8 / 16)) < 1e-6
    assert (new_coef > KL_COEF) == (mean_kl > TARGET_KL)
