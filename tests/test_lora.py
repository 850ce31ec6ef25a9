"""LoRA (minirlhf/lora.py) against independent references: a fresh adapter (B = 0) changes no bit of the logits; the
adapted forward equals a float64 W x + (alpha / r) B A x written out here, and a plain GPT holding the merged
weights computed here; merged equals unmerged; only adapters and heads get gradients and change (the trunk's bytes
stay); the adapters-off view gives the base model's log-probs bit for bit; the value model on the reward trunk
reads the reward model exactly with its adapters off; adapter checkpoints round-trip exactly, merge to a plain
checkpoint, and refuse a base whose weights changed; dropout is refused in RL.

    python -m pytest tests/test_lora.py -q
"""

import copy
from types import SimpleNamespace

import pytest
import torch

from minirlhf import lora
from minirlhf.checkpoint import CheckpointError, load_checkpoint, load_model, merge_checkpoint, save_checkpoint
from minirlhf.ensemble import RewardEnsemble
from minirlhf.model import GPT, GPTConfig, ScalarGPT
from minirlhf.scoring import response_logprobs
from minirlhf.training import adamw

RANK, ALPHA = 4, 6.0
CFG = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=1004, block_size=32)


def model_and_batch(seed=0, cls=GPT):
    torch.manual_seed(seed)
    model = cls(GPTConfig(**CFG)).eval()
    tokens = torch.randint(1000, (3, 12))
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[0, :4] = False  # a left-padded row
    return model, tokens, mask


def randomise_B(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora.lora_layers(model):
            m.lora_B.copy_(0.05 * torch.randn(m.lora_B.shape, generator=g))
    return model


def test_fresh_adapters_give_the_base_logits_exactly():
    base, tokens, mask = model_and_batch()
    adapted = lora.add_lora(copy.deepcopy(base), RANK, ALPHA)
    assert len(lora.lora_layers(adapted)) == 4 * CFG["n_layer"]  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    assert torch.equal(adapted(tokens, mask), base(tokens, mask))
    assert all(m.lora_A.abs().sum() > 0 for _, m in lora.lora_layers(adapted))  # A random, B zero


def test_layer_matches_float64_formula():
    torch.manual_seed(0)
    base = torch.nn.Linear(24, 40)
    layer = lora.LoRALinear(base, RANK, ALPHA)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 24)
    W, b, A, B = (t.detach().double() for t in (base.weight, base.bias, layer.lora_A, layer.lora_B))
    want = x.double() @ W.T + b + (ALPHA / RANK) * (x.double() @ A.T @ B.T)  # W x + b + (alpha / r) B A x
    got = layer(x).double()
    assert (got - want).norm() / want.norm() < 1e-6


def test_model_matches_a_plain_gpt_with_merged_weights_and_merge_equals_unmerged():
    base, tokens, mask = model_and_batch()
    adapted = randomise_B(lora.add_lora(copy.deepcopy(base), RANK, ALPHA))
    plain = copy.deepcopy(base)  # the merged weights computed here, in float64, into a plain GPT
    with torch.no_grad():
        for name, m in lora.lora_layers(adapted):
            w = plain.get_submodule(name).weight
            w.copy_(w.double() + (ALPHA / RANK) * m.lora_B.double() @ m.lora_A.double())
    want = plain(tokens, mask)
    got = adapted(tokens, mask)
    assert (got - want).norm() / want.norm() < 1e-6
    merged = lora.merge(copy.deepcopy(adapted))
    assert type(merged.transformer.h[0].attn.c_attn) is torch.nn.Linear
    assert set(merged.state_dict()) == set(base.state_dict())
    assert (merged(tokens, mask) - got).norm() / got.norm() < 1e-6
    lora.set_merged(adapted, True)  # merged in place, adapters kept: same numbers, then back
    assert (adapted(tokens, mask) - got).norm() / got.norm() < 1e-6
    lora.set_merged(adapted, False)
    assert (adapted(tokens, mask) - got).norm() / got.norm() < 1e-6


def test_only_adapters_and_head_train_and_the_trunk_keeps_its_bytes():
    model, tokens, mask = model_and_batch(cls=ScalarGPT)
    lora.add_lora(model, RANK, ALPHA, trained=("score.",))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = adamw(model, 1e-2)
    for _ in range(3):
        model(tokens, mask).square().mean().backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == ("lora_" in n or n.startswith("score.")), n
        opt.step()
        opt.zero_grad(set_to_none=True)
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        if "lora_" in n or n.startswith("score."):
            assert changed, n
        else:
            assert not changed and p.numpy().tobytes() == before[n].numpy().tobytes(), n


def test_adapters_off_view_is_the_base_model_bit_for_bit():
    base, tokens, mask = model_and_batch()
    policy = randomise_B(lora.add_lora(copy.deepcopy(base), RANK, ALPHA))
    ref = lora.AdaptersOff(policy).requires_grad_(False).eval()
    assert list(ref.parameters()) == [] and all(p.requires_grad for _, m in lora.lora_layers(policy)
                                                for p in (m.lora_A, m.lora_B))
    for fused in (False, True):
        want = response_logprobs(base, tokens, mask, 5, temperature=0.7, fused=fused)
        assert torch.equal(response_logprobs(ref, tokens, mask, 5, temperature=0.7, fused=fused), want)
        assert not torch.equal(response_logprobs(policy, tokens, mask, 5, temperature=0.7, fused=fused), want)
    out = ref.generate(tokens[1:, :6], None, 4, eos_token_id=1002, pad_token_id=1003, temperature=0)
    assert torch.equal(out[0], base.generate(tokens[1:, :6], None, 4, eos_token_id=1002, pad_token_id=1003,
                                             temperature=0)[0])


def test_value_model_on_the_reward_trunk():
    rm, tokens, mask = model_and_batch(cls=ScalarGPT)
    args = SimpleNamespace(lora_rank=RANK, lora_alpha=ALPHA, lora_targets="c_attn,c_proj,c_fc", rm_ckpt="rm.pt")
    reward, value = lora.value_on_reward_trunk(copy.deepcopy(rm), args)
    assert torch.equal(value(tokens, mask), rm(tokens, mask))  # B = 0 and the head copied from the reward head
    randomise_B(value.trunk)
    with torch.no_grad():
        value.score.bias.add_(1.0)
    assert torch.equal(reward(tokens, mask, start=3), rm(tokens, mask, start=3))  # adapters off: the reward model
    assert not torch.allclose(value(tokens, mask), rm(tokens, mask))
    trained = {n for n, p in value.named_parameters() if p.requires_grad}
    assert trained == {"score.weight", "score.bias"} | {n for n in trained if "lora_" in n} and len(trained) > 2
    state = lora.trained_state_dict(value)
    assert set(state) == trained
    fresh = lora.ValueOnTrunk(lora.add_lora(copy.deepcopy(rm), RANK, ALPHA))
    lora.load_trained_state_dict(fresh, state)
    assert torch.equal(fresh(tokens, mask), value(tokens, mask))
    second = copy.deepcopy(rm)
    with torch.no_grad():
        second.score.bias.add_(0.5)
    ensemble = RewardEnsemble([copy.deepcopy(rm), second], "min")
    want = ensemble(tokens, mask)
    ensemble, value = lora.value_on_reward_trunk(ensemble.requires_grad_(False), args)  # value on the first trunk
    randomise_B(value.trunk)
    assert torch.equal(ensemble(tokens, mask), want) and any(p.requires_grad for p in value.parameters())


def test_rl_refuses_dropout_and_bad_targets():
    base, _, _ = model_and_batch()
    with pytest.raises(ValueError, match="ratio"):
        lora.add_lora(copy.deepcopy(base), RANK, ALPHA, dropout=0.1, rl=True)
    lora.add_lora(copy.deepcopy(base), RANK, ALPHA, dropout=0.1, rl=False)  # SFT may
    with pytest.raises(ValueError, match="lm_head"):
        lora.add_lora(copy.deepcopy(base), RANK, ALPHA, targets="lm_head")
    assert lora.parse_targets("c_proj") == ["attn.c_proj", "mlp.c_proj"]


def test_frozen_weights_in_bf16_adapters_fp32():
    base, _, _ = model_and_batch()
    model = lora.frozen_to(lora.add_lora(base, RANK, ALPHA), torch.bfloat16)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if n.endswith(("c_attn.weight", "c_fc.weight")))
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n or "wte" in n or "ln_" in n)
    tokens = torch.randint(1000, (2, 6))  # generation runs outside autocast: bf16 matmuls, fp32 residual stream
    assert model.generate(tokens, None, 3, eos_token_id=1002, pad_token_id=1003)[0].shape == (2, 9)


def test_adapter_checkpoint_round_trip_merge_and_mismatched_base(tmp_path):
    base, tokens, mask = model_and_batch()
    save_checkpoint(str(tmp_path / "base.pt"), base, stage="sft", tokenizer_name="lab")
    policy = randomise_B(lora.add_lora(copy.deepcopy(base), RANK, ALPHA, base=str(tmp_path / "base.pt")))
    save_checkpoint(str(tmp_path / "lora.pt"), policy, stage="ppo", tokenizer_name="lab", step=3)
    ckpt = load_checkpoint(str(tmp_path / "lora.pt"))
    assert set(ckpt["model"]) == {n for n in policy.state_dict() if "lora_" in n}  # adapters alone
    assert ckpt["lora"]["base_sha256"] == lora.trunk_sha256(base)
    fresh = lora.add_lora(copy.deepcopy(base), RANK, ALPHA)
    lora.load_trained_state_dict(fresh, ckpt["model"])
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), policy.state_dict().values()))
    want = lora.merge(copy.deepcopy(policy))(tokens, mask)
    loaded, _, _ = load_model(str(tmp_path / "lora.pt"))  # every reader gets the merged, plain model
    assert type(loaded) is GPT and torch.equal(loaded(tokens, mask), want)
    merge_checkpoint(str(tmp_path / "lora.pt"), str(tmp_path / "merged.pt"))
    plain = load_checkpoint(str(tmp_path / "merged.pt"))
    assert "lora" not in plain and plain["step"] == 3 and set(plain["model"]) == set(base.state_dict())
    assert torch.equal(load_model(str(tmp_path / "merged.pt"))[0](tokens, mask), want)
    other = copy.deepcopy(base)
    with torch.no_grad():
        other.transformer.h[1].mlp.c_fc.weight[0, 0] += 1e-3  # one weight of the base retrained
    save_checkpoint(str(tmp_path / "base.pt"), other, stage="sft", tokenizer_name="lab")
    with pytest.raises(CheckpointError, match="refusing"):
        load_model(str(tmp_path / "lora.pt"))
