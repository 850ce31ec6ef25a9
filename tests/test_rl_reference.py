"""The shared log-prob function, the SFT loss, the Bradley-Terry loss and the sampler against references written
out here in float64 on unpadded rows: never against the code under test.

    python -m pytest tests/test_rl_reference.py -q

The models have peaked next-token distributions (a near-uniform model cannot tell a log-prob read one position
off from the right one). The SFT check runs one real step of train_sft.main with two micro-batches of different
token counts and compares its gradient with the float64 gradient of the mean over response tokens only.
"""

import copy
import math

import pytest
import torch

import train_rm
import train_sft
from minirlhf.checkpoint import save_checkpoint
from minirlhf.data import Example, Pair, encode_example, write_jsonl
from minirlhf.model import GPT, GPTConfig, ScalarGPT
from minirlhf.tokenizer import get_tokenizer
from minirlhf.scoring import response_logprobs
from minirlhf.training import parse_args, step_generator

V, PAD, EOT = 40, 39, 38


def peaked_gpt(seed=0, vocab_size=V):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab_size, block_size=64)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(10)  # tied to wte: logits of a few units, far from uniform
    return model


def row_logprobs(model64, seq, temperature=1.0):
    """(log p(seq[t] | seq[:t]) for t >= 1, entropy of each of those distributions) from a plain forward."""
    logits = model64(torch.tensor([seq]))[0].double() / temperature
    lp = torch.log_softmax(logits, -1)
    logp = [lp[t - 1, seq[t]].item() for t in range(1, len(seq))]
    entropy = [-(lp[t - 1].exp() * lp[t - 1]).sum().item() for t in range(1, len(seq))]
    return logp, entropy


@pytest.mark.parametrize("fused", [False, True])
def test_response_logprobs_match_log_softmax_at_the_previous_position(fused):
    model = peaked_gpt()
    model64 = copy.deepcopy(model).double()
    prompts, responses = [[1, 2, 3], [4, 5, 6, 7, 8], [9]], [[10, 11, 12, 13], [14, EOT], [15, 16, 17]]
    P, R = 5, 4
    tokens, mask = torch.full((3, P + R), PAD), torch.zeros(3, P + R, dtype=torch.long)
    for b, (p, r) in enumerate(zip(prompts, responses)):  # prompts left-padded, responses right-padded
        tokens[b, P - len(p): P], mask[b, P - len(p): P] = torch.tensor(p), 1
        tokens[b, P: P + len(r)], mask[b, P: P + len(r)] = torch.tensor(r), 1
    got, entropy = response_logprobs(model, tokens, mask, P, temperature=0.7, return_entropy=True, fused=fused)
    assert got.shape == (3, R)
    spread = []
    for b, (p, r) in enumerate(zip(prompts, responses)):
        want, want_entropy = row_logprobs(model64, p + r, temperature=0.7)
        want, want_entropy = want[len(p) - 1:], want_entropy[len(p) - 1:]  # the response tokens
        assert torch.allclose(got[b, : len(r)].double(), torch.tensor(want, dtype=torch.float64), atol=1e-4)
        assert torch.allclose(entropy[b, : len(r)].double(), torch.tensor(want_entropy, dtype=torch.float64), atol=1e-4)
        spread += want
    assert max(spread) - min(spread) > 1.0  # the tokens are far from equally likely


def test_bradley_terry_loss_is_minus_log_sigmoid_of_the_margin():
    torch.manual_seed(1)
    rm = ScalarGPT.from_gpt(peaked_gpt(1)).eval()
    with torch.no_grad():
        rm.score.weight.mul_(5)  # rewards a few units apart
    rm64 = copy.deepcopy(rm).double()
    pairs = [([1, 2, 3, 4, EOT], [1, 2, 5, EOT], ""), ([6, 7, EOT], [6, 8, 9, 10, 11, EOT], ""),
             ([12, 13, 14, EOT], [12, 15, EOT], "")]
    batch = train_rm.make_batch([Pair(Example([], c), Example([], r), prompt) for c, r, prompt in pairs], "cpu", PAD)
    loss_sum, n, right = train_rm.bradley_terry(rm, *batch)
    reward = lambda seq: rm64(torch.tensor([seq]))[0, -1].item()  # noqa: E731  the last token of an unpadded row
    margins = [reward(c) - reward(r) for c, r, _ in pairs]
    want = sum(math.log1p(math.exp(-d)) for d in margins)  # -log sigmoid(d)
    assert min(abs(d) for d in margins) > 0.05 and any(d > 0 for d in margins) and any(d < 0 for d in margins)
    assert loss_sum.item() == pytest.approx(want, rel=1e-5) and n == 3
    assert right.item() == sum(d > 0 for d in margins)


def test_generate_never_emits_the_pad_token_even_when_the_model_prefers_it():
    model = peaked_gpt(2)
    with torch.no_grad():  # every position's hidden state is the same vector h, and pad's logit is h.h * 50
        h = torch.randn(32)
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(h)
        model.lm_head.weight[PAD] = 50 * h
    assert (model(torch.tensor([[1, 2, 3]]))[0].argmax(-1) == PAD).all()  # the rigged model wants pad
    ids, mask = torch.tensor([[PAD, 1, 2], [3, 4, 5]]), torch.tensor([[0, 1, 1], [1, 1, 1]])
    for temperature in (1.0, 0.0):
        tokens, out_mask = model.generate(ids, mask, 6, eos_token_id=EOT, pad_token_id=PAD, temperature=temperature,
                                          generator=torch.Generator().manual_seed(0))
        assert not (tokens[:, 3:][out_mask[:, 3:]] == PAD).any()


def test_sft_step_gradient_is_the_mean_over_response_tokens_only(tmp_path, monkeypatch):
    tok = get_tokenizer("lab")
    model = peaked_gpt(3, vocab_size=tok.vocab_size)
    save_checkpoint(str(tmp_path / "init.pt"), model, stage="sft", tokenizer_name="lab")
    rows = [{"prompt": "Human: What is two plus two?\n\nAssistant:", "response": " Four."},
            {"prompt": "Human: Hi\n\nAssistant:", "response": " Hello! How can I help you today?"},
            {"prompt": "Human: Name a colour.\n\nAssistant:", "response": " Blue"}]
    write_jsonl(str(tmp_path / "sft.jsonl"), rows)
    grads = []

    class RecordingOptimizer:
        def __init__(self, model, lr, weight_decay):
            self.params, self.param_groups = list(model.parameters()), [{"lr": lr}]

        def step(self):
            grads.append(torch.cat([p.grad.flatten() for p in self.params]).double())

        def zero_grad(self, set_to_none=True):
            pass

        def state_dict(self):
            return {}

    monkeypatch.setattr(train_sft, "adamw", RecordingOptimizer)
    train_sft.main(parse_args(train_sft.Args, [
        "--train_data", str(tmp_path / "sft.jsonl"), "--init_from", str(tmp_path / "init.pt"), "--tokenizer", "lab",
        "--out_dir", str(tmp_path / "out"), "--batch_size", "4", "--micro_batch_size", "2", "--max_steps", "1",
        "--grad_clip", "0", "--seed", "3"]))

    model64 = copy.deepcopy(model).double()
    picks = torch.randint(len(rows), (4,), generator=step_generator(3, 0)).tolist()  # the step's examples
    examples = [encode_example(tok, rows[i]["prompt"], rows[i]["response"], 64)[:2] for i in picks]
    micro_tokens = [sum(len(r) for _, r in examples[i::2]) for i in range(2)]  # train_sft's two micro-batches
    assert micro_tokens[0] != micro_tokens[1]  # so a mean of micro-batch means differs from the step's token mean
    total, count = 0.0, 0
    for p, r in examples:  # -log p(response tokens, end-of-text included), the prompt tokens left out
        logits = model64(torch.tensor([p + r]))[0]
        lp = torch.log_softmax(logits, -1)
        total = total - sum(lp[t - 1, (p + r)[t]] for t in range(len(p), len(p) + len(r)))
        count += len(r)
    (total / count).backward()
    want = torch.cat([q.grad.flatten() for q in model64.parameters()])
    err = (grads[0] - want).norm() / want.norm()
    assert len(grads) == 1 and err < 1e-4, f"relative gradient error {err:.2e}"
