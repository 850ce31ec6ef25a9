"""The GPT model file: architecture and weight loading against Hugging Face's GPT-2, padding, KV-cache generation.

    python -m pytest tests/test_model.py -q

The peer check builds a `transformers` GPT2LMHeadModel with random weights, saves it with save_pretrained and
loads it through GPT.from_pretrained: equal logits prove the architecture and the name mapping. Nothing is
downloaded.
"""

import pytest
import torch

from minirlhf.model import GPT, GPTConfig, ScalarGPT

torch.manual_seed(0)


def tiny(**kw):
    return GPT(GPTConfig.preset("tiny", vocab_size=61, block_size=48, **kw)).eval()


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("safetensors", [True, False])
def test_loads_huggingface_gpt2_and_matches_its_logits(tmp_path, safetensors):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=40, n_embd=48, n_layer=3, n_head=4)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # HF zero-initialises biases; make every weight count
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    if safetensors:
        hf.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").exists()
    else:  # the older pytorch_model.bin layout
        (tmp_path / "config.json").write_text(cfg.to_json_string())
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 97, (3, 40))
    with torch.no_grad():
        expected = hf(idx).logits
        got = ours(idx)
    assert rel_err(got, expected) < 1e-5
    # Left padding with our mask agrees with HF given the same real tokens unpadded.
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[0, :9] = 0
    with torch.no_grad():
        padded = ours(idx, mask)
        row0 = hf(idx[:1, 9:]).logits
    assert rel_err(padded[0, 9:], row0[0]) < 1e-5


def test_from_pretrained_grows_vocab_for_pad(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(str(tmp_path), vocab_size=51)
    assert ours.lm_head.weight.shape == (51, 32) and ours.transformer.wte.weight is ours.lm_head.weight
    assert torch.allclose(ours.lm_head.weight[50], hf.transformer.wte.weight.mean(0), atol=1e-6)


def test_left_padded_logits_equal_unpadded():
    model = tiny()
    idx = torch.randint(0, 59, (4, 13))
    mask = torch.ones_like(idx)
    for b, n_pad in enumerate([0, 1, 5, 12]):
        mask[b, :n_pad] = 0
        idx[b, :n_pad] = 60  # whatever sits under the padding must not matter
    with torch.no_grad():
        batch = model(idx, mask)
        for b, n_pad in enumerate([0, 1, 5, 12]):
            alone = model(idx[b:b + 1, n_pad:])
            assert torch.allclose(batch[b, n_pad:], alone[0], atol=1e-5), b


def test_right_padded_logits_equal_unpadded():
    """Right padding takes the fused causal path; real tokens must not see the pads after them."""
    from minirlhf.model import _right_padded
    model = tiny()
    idx = torch.randint(0, 59, (3, 10))
    mask = torch.ones_like(idx)
    mask[1, 6:], mask[2, 1:] = 0, 0
    assert _right_padded(mask) and not _right_padded(mask.flip(1))
    with torch.no_grad():
        batch = model(idx, mask)
        for b, n in enumerate([10, 6, 1]):
            assert torch.allclose(batch[b, :n], model(idx[b:b + 1, :n])[0], atol=1e-5), b


def greedy_by_recomputation(model, prompt, max_new, eos, pad):
    """The plain loop the KV cache must reproduce: run the whole sequence again for every new token."""
    seq = list(prompt)
    for _ in range(max_new):
        logits = model(torch.tensor([seq]))[0, -1]
        logits[pad] = float("-inf")
        seq.append(int(logits.argmax()))
        if seq[-1] == eos:
            break
    return seq[len(prompt):]


def test_kv_cache_greedy_generation_equals_recomputation():
    model = tiny()
    eos, pad = 59, 60
    # Bias the model towards eos after a few tokens so that rows finish at different steps.
    with torch.no_grad():
        model.lm_head.weight[eos] += 0.3 * torch.randn(64)
    prompts = [torch.randint(0, 59, (n,)).tolist() for n in (5, 11, 1, 8)]
    T = max(map(len, prompts))
    idx = torch.full((4, T), pad)
    mask = torch.zeros(4, T, dtype=torch.long)
    for b, p in enumerate(prompts):
        idx[b, T - len(p):], mask[b, T - len(p):] = torch.tensor(p), 1
    tokens, out_mask = model.generate(idx, mask, 20, eos_token_id=eos, pad_token_id=pad, temperature=0)
    assert torch.equal(out_mask[:, :T], mask.bool())
    for b, p in enumerate(prompts):
        expected = greedy_by_recomputation(model, p, 20, eos, pad)
        got = tokens[b, T:][out_mask[b, T:]].tolist()
        assert got == expected, b
        # after the first eos, the row is pad and masked out
        assert (tokens[b, T + len(got):] == pad).all()


def test_sampling_draws_from_the_softmax_and_never_draws_a_masked_token():
    from minirlhf.model import sample
    logits = torch.tensor([[1.0, 0.2, float("-inf"), 1.5, -0.5, 0.0, -2.0, float("-inf")]])
    n = 100_000
    draws = sample(logits.expand(n, -1), temperature=0.8, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=8).double() / n
    p = torch.softmax(logits.double()[0] / 0.8, -1)  # the exact probabilities, float64
    assert freq[2] == 0 and freq[7] == 0  # -inf (like the pad token, the last id) is never drawn
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / n).sqrt() + 1e-12).all(), (freq, p)


def test_sampling_is_seeded_and_respects_top_k():
    model = tiny()
    idx, mask = torch.randint(0, 59, (8, 4)), torch.ones(8, 4, dtype=torch.long)
    gen = lambda seed, **kw: model.generate(idx, mask, 6, eos_token_id=59, pad_token_id=60,
                                            generator=torch.Generator().manual_seed(seed), **kw)[0]
    assert torch.equal(gen(1), gen(1)) and not torch.equal(gen(1), gen(2))
    # top_k=1 is greedy whatever the temperature
    greedy = model.generate(idx, mask, 6, eos_token_id=59, pad_token_id=60, temperature=0)[0]
    assert torch.equal(gen(3, temperature=2.0, top_k=1), greedy)
    assert torch.equal(gen(4, temperature=2.0, top_p=1e-6), greedy)


def test_scalar_model_shares_the_trunk_and_ignores_padding():
    gpt = tiny()
    rm = ScalarGPT.from_gpt(gpt).eval()
    idx = torch.randint(0, 59, (2, 9))
    mask = torch.ones_like(idx)
    mask[1, :4] = 0
    with torch.no_grad():
        assert torch.allclose(rm.hidden_states(idx), gpt.hidden_states(idx))
        scores = rm(idx, mask)
        assert scores.shape == (2, 9) and scores.dtype == torch.float32
        assert torch.allclose(scores[1, 4:], rm(idx[1:, 4:])[0], atol=1e-5)
    with pytest.raises(TypeError):
        rm.generate(idx, mask, 3, eos_token_id=59, pad_token_id=60)


@pytest.mark.parametrize("padding", ["none", "left", "right"])
def test_start_skips_the_last_block_on_early_positions_without_changing_later_ones(padding):
    """hidden_states(start=s) must equal the full computation's positions s.. (values and gradients)."""
    model = tiny()
    idx = torch.randint(0, 59, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    if padding == "left":
        mask[0, :4] = 0
    elif padding == "right":
        mask[1, 9:] = 0
    full = model.hidden_states(idx, mask)[:, 5:]
    part = model.hidden_states(idx, mask, start=5)
    assert torch.allclose(part, full, atol=1e-6)
    g_full = torch.autograd.grad(full.square().sum(), model.transformer.h[0].mlp.c_fc.weight)[0]
    g_part = torch.autograd.grad(part.square().sum(), model.transformer.h[0].mlp.c_fc.weight)[0]
    assert torch.allclose(g_part, g_full, atol=1e-6)
    scalar = ScalarGPT.from_gpt(model)
    assert torch.allclose(scalar(idx, mask, start=5), scalar(idx, mask)[:, 5:], atol=1e-6)
    with pytest.raises(ValueError):
        model.hidden_states(idx, mask, start=12)
