"""DPO and IPO: the loss against the formula on hand-computed log-probs, a zero gradient where the loss must be
flat, the summed response log-probs (plain and fused linear kernel alike), and a tiny end-to-end run on the
lab that learns its training pairs and resumes exactly.

    python -m pytest tests/test_dpo.py -q
"""

import json
import math

import pytest
import torch

import train_dpo
import train_sft
from minirlhf.checkpoint import load_checkpoint, load_model
from minirlhf.data import Example, Pair, read_jsonl, write_jsonl
from minirlhf.lab import annotate
from minirlhf.lab.make_data import make_data
from minirlhf.model import GPT, GPTConfig
from minirlhf.training import parse_args


def pair(chosen, rejected):
    """A data.Pair from its two sides, each (prompt ids, response ids), as load_pairs makes them."""
    return Pair(Example(*chosen), Example(*rejected), "")


class UniformLM(torch.nn.Module):
    """Logits 0 over V tokens everywhere: every token has log-prob -log V, so a response of n tokens has -n log V."""

    def __init__(self, vocab_size=4):
        super().__init__()
        self.vocab_size = vocab_size
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, idx, attention_mask=None, start=0):
        return self.dummy * torch.zeros(*idx[:, start:].shape, self.vocab_size)


@pytest.mark.parametrize("beta, pi_c, ref_c, pi_r, ref_r, dpo, ipo", [
    # margin h = (pi_c - ref_c) - (pi_r - ref_r); DPO log(1 + exp(-beta h)); IPO (h - 1 / (2 beta))^2
    (0.5, -2.0, -3.0, -6.0, -5.0, 0.31326168751822286, 1.0),   # h = 2: log(1 + e^-1); (2 - 1)^2
    (0.1, -9.0, -7.0, -4.0, -6.0, 0.9130152523999526, 81.0),   # h = -4: log(1 + e^0.4); (-4 - 5)^2
    (1.0, -1.0, -1.0, -1.0, -1.0, 0.6931471805599453, 0.25),   # h = 0: log 2; (0 - 0.5)^2
])
def test_loss_matches_the_formula(beta, pi_c, ref_c, pi_r, ref_r, dpo, ipo):
    t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    for loss_type, expected in (("dpo", dpo), ("ipo", ipo)):
        loss = train_dpo.preference_loss(t(pi_c) - t(ref_c), t(pi_r) - t(ref_r), beta, loss_type)
        assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12), loss_type


@pytest.mark.parametrize("loss_type", ["dpo", "ipo"])
def test_log_probs_are_summed_over_response_tokens_only(loss_type):
    # Right-padded batch, prompts of different lengths: chosen has 2 response tokens, rejected 3 (eot included).
    pairs = [pair(([5, 6], [7, 3]), ([5, 6, 5, 6], [7, 7, 3]))]
    ids, mask, response_mask = train_dpo.make_batch(pairs, "cpu", pad_id=0)
    assert ids.shape == (2, 7) and response_mask.sum(1).tolist() == [2, 3]
    model = UniformLM(vocab_size=8)
    chosen, rejected = train_dpo.sequence_logprobs(model, ids, mask, response_mask).chunk(2)
    assert chosen.item() == pytest.approx(-2 * math.log(8)) and rejected.item() == pytest.approx(-3 * math.log(8))
    # With reference log-probs -3 and -3, the log-ratio margin is (-2 log 8 + 3) - (-3 log 8 + 3) = log 8.
    args = parse_args(train_dpo.Args, ["--beta", "1.0", "--loss", loss_type])
    loss_sum, stats = train_dpo.dpo_loss(model, ids, mask, response_mask, torch.tensor([[-3.0, -3.0]]), args)
    expected = math.log(1 + 1 / 8) if loss_type == "dpo" else (math.log(8) - 0.5) ** 2
    assert loss_sum.item() == pytest.approx(expected, rel=1e-6)
    assert stats["chosen"] - stats["rejected"] == pytest.approx(math.log(8), rel=1e-6) and stats["correct"] == 1


@pytest.mark.parametrize("loss_type", ["dpo", "ipo"])
def test_zero_gradient_when_policy_is_reference_and_chosen_is_rejected(loss_type):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=32, block_size=16)).double().eval()  # float64: no rounding noise
    args = parse_args(train_dpo.Args, ["--loss", loss_type, "--beta", "0.1"])

    def grad_norm(pairs):
        ids, mask, response_mask = train_dpo.make_batch(pairs, "cpu", pad_id=31)
        ref = train_dpo.pair_logprobs(model, pairs, 8, "cpu", pad_id=31)  # the policy itself
        model.zero_grad()
        loss_sum, stats = train_dpo.dpo_loss(model, ids, mask, response_mask, ref, args)
        loss_sum.backward()
        assert stats["chosen"] == 0 and stats["rejected"] == 0 and stats["correct"] == len(pairs) / 2
        return loss_sum.item(), math.sqrt(sum(p.grad.pow(2).sum().item() for p in model.parameters()))

    same = [pair(([1, 2, 3], [4, 5, 30]), ([1, 2, 3], [4, 5, 30])), pair(([7], [8, 9, 10, 30]), ([7], [8, 9, 10, 30]))]
    loss, norm = grad_norm(same)
    assert loss == pytest.approx(2 * (math.log(2) if loss_type == "dpo" else 25.0))  # margin 0 in both pairs
    assert norm < 1e-10
    # ... while a pair of different responses does move the policy (the check above is not vacuous)
    assert grad_norm([pair(([1, 2, 3], [4, 5, 30]), ([1, 2, 3], [6, 30]))])[1] > 1e-3


def test_fused_linear_logprobs_give_the_same_sequence_logprobs():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=32, block_size=16)).eval()
    pairs = [pair(([1, 2, 3], [4, 5, 30]), ([1, 2, 3, 4, 5], [6, 30])), pair(([7], [8, 9, 10, 30]), ([7, 7], [11, 30]))]
    batch = train_dpo.make_batch(pairs, "cpu", pad_id=31)
    plain, fused = train_dpo.sequence_logprobs(model, *batch), train_dpo.sequence_logprobs(model, *batch, fused=True)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- end to end on the lab

SFT = ["--init_from", "scratch:tiny", "--block_size", "96", "--batch_size", "8", "--max_steps", "6",
       "--log_interval", "3", "--device", "cpu"]


def dpo_flags(d, out):
    return ["--train_data", f"{d}/prefs.jsonl", "--eval_data", f"{d}/prefs.jsonl", "--sft_ckpt", f"{d}/sft/ckpt.pt",
            "--out_dir", out, "--batch_size", "8", "--micro_batch_size", "4", "--max_steps", "12", "--lr", "3e-3",
            "--warmup_steps", "2", "--beta", "0.5", "--log_interval", "4", "--eval_interval", "6",
            "--ckpt_interval", "6", "--device", "cpu"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Tiny lab data, an SFT model, and SFT samples labelled by the simulated annotator."""
    d = tmp_path_factory.mktemp("lab")
    for name, rows in make_data(seed=0, n_sft=96, n_train_per_family=4, n_eval_per_family=1).items():
        write_jsonl(str(d / f"{name}.jsonl"), rows)
    train_sft.main(parse_args(train_sft.Args, SFT + ["--train_data", f"{d}/sft.jsonl", "--out_dir", f"{d}/sft"]))
    annotate.main(["sample", "--ckpt", f"{d}/sft/ckpt.pt", "--prompts", f"{d}/prompts_train.jsonl",
                   "--out", f"{d}/samples.jsonl", "--k", "2", "--max_new_tokens", "8"])
    annotate.main(["label", "--samples", f"{d}/samples.jsonl", "--out", f"{d}/prefs.jsonl", "--labeller", "sim"])
    return d


class Killed(Exception):
    pass


def implied_reward_accuracy(policy_path, ref_path, prefs_path):
    """Fraction of pairs whose chosen response gets the higher implied reward log pi - log pi_ref (ties: half)."""
    policy, tok, _ = load_model(policy_path, expect="gpt")
    ref = load_model(ref_path, expect="gpt")[0]
    pairs = train_dpo.load_pairs(prefs_path, tok, policy.config.block_size)[0]
    with torch.no_grad():
        pi = train_dpo.pair_logprobs(policy, pairs, 16, "cpu", tok.pad_token)
        pi_ref = train_dpo.pair_logprobs(ref, pairs, 16, "cpu", tok.pad_token)
    r = pi - pi_ref  # (N, 2)
    return ((r[:, 0] > r[:, 1]).float() + 0.5 * (r[:, 0] == r[:, 1]).float()).mean().item()


def test_dpo_learns_its_training_pairs_and_resumes_exactly(lab, tmp_path, monkeypatch):
    assert len(read_jsonl(f"{lab}/prefs.jsonl", ("prompt", "chosen", "rejected"))) >= 8
    before = implied_reward_accuracy(f"{lab}/sft/ckpt.pt", f"{lab}/sft/ckpt.pt", f"{lab}/prefs.jsonl")
    assert before == 0.5  # the policy is the reference: every implied reward is 0

    straight = str(tmp_path / "straight")
    train_dpo.main(parse_args(train_dpo.Args, dpo_flags(lab, straight)))
    after = implied_reward_accuracy(f"{straight}/ckpt.pt", f"{lab}/sft/ckpt.pt", f"{lab}/prefs.jsonl")
    assert after >= 0.8, (before, after)
    log = [json.loads(line) for line in open(f"{straight}/log.jsonl")]
    assert [row["step"] for row in log] == [4, 6, 8, 12]
    assert log[-1]["eval/accuracy"] == pytest.approx(after, abs=1e-6)  # the script's metric is the same number
    assert log[-1]["eval/loss"] < math.log(2) and log[-1]["rewards/margin"] > 0
    ckpt = load_checkpoint(f"{straight}/ckpt.pt", expect="gpt")
    assert ckpt["stage"] == "dpo" and ckpt["step"] == 12 and ckpt["beta"] == 0.5

    # killed right after the step-6 checkpoint, then resumed: the same weights as the uninterrupted run
    killed = str(tmp_path / "killed")
    real = train_dpo.save_training_checkpoint

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(train_dpo, "save_training_checkpoint", save_then_die)
        with pytest.raises(Killed):
            train_dpo.main(parse_args(train_dpo.Args, dpo_flags(lab, killed)))
    train_dpo.main(parse_args(train_dpo.Args, dpo_flags(lab, killed) + ["--resume", "true"]))
    a, b = load_checkpoint(f"{straight}/ckpt.pt"), load_checkpoint(f"{killed}/ckpt.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
