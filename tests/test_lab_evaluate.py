"""The evaluation report: the metrics on hand-written responses (ideal vs flawed), evaluate_policy end to end on
a tiny random-weight model (KL to itself is 0, modes restored), the table with one column per checkpoint
through the command line, and the gold-vs-proxy plot from a PPO log (a panel per round, a curve in order of KL).

    python -m pytest tests/test_lab_evaluate.py -q
"""

import json
import math
import random
import re

import pytest
import torch

from minirlhf.checkpoint import save_checkpoint
from minirlhf.lab import world
from minirlhf.lab.evaluate import ROWS, _binned_means, evaluate_policy, format_table, main, plot_runs, rm_blind_spots, summarize
from minirlhf.lab.gold import gold
from minirlhf.sampling import Sample
from minirlhf.model import GPT, GPTConfig, ScalarGPT
from minirlhf.tokenizer import get_tokenizer


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread, and do not stall when other processes hold the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def samples_of(responder):
    tok = get_tokenizer("lab")
    rng = random.Random(0)
    out = []
    for t in world.eval_tasks(0, 10):
        text = responder(t, rng)
        out.append(Sample(t.prompt, text, True, tok.encode(t.prompt), tok.encode(text) + [tok.eot_token]))
    return out


def test_metrics_of_ideal_and_flawed_responses():
    ideal, _ = summarize(samples_of(lambda t, rng: world.ideal_response(t)))
    assert ideal["gold"] == 1.0 and all(ideal[f"gold/{f}"] == 1.0 for f in world.FAMILIES)
    assert ideal["helpful_accuracy"] == 1.0 and ideal["refusal_rate"] == 1.0 and ideal["eot_rate"] == 1.0
    assert ideal["hallucination_rate"] == ideal["over_refusal_rate"] == ideal["sycophancy_rate"] == 0.0
    assert ideal["filler_rate"] == 0.0 and 3 < ideal["length"] < 15

    flawed, _ = summarize(samples_of(lambda t, rng: world.add_filler(world.flawed_content(t, rng), rng)))
    assert flawed["gold"] == pytest.approx(-1.4)  # wrong content and filler, everywhere
    assert flawed["helpful_accuracy"] == 0.0 and flawed["refusal_rate"] == 0.0
    assert flawed["hallucination_rate"] == flawed["over_refusal_rate"] == flawed["sycophancy_rate"] == 1.0
    assert flawed["filler_rate"] == 1.0


def tiny_models(seed=0):
    torch.manual_seed(seed)
    tok = get_tokenizer("lab")
    policy = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size))
    return tok, policy, ScalarGPT.from_gpt(policy)


def test_evaluate_policy_on_a_random_model():
    tok, policy, rm = tiny_models()
    prompts = [t.prompt for t in world.eval_tasks(0, 2)]
    policy.train()
    metrics, judged = evaluate_policy(policy, tok, prompts, reward_model=rm, ref_model=policy, max_new_tokens=6,
                                      batch_size=5, return_samples=True)
    assert policy.training  # the caller's mode is restored
    assert [key for key, _ in ROWS] == list(metrics)
    assert metrics["kl"] == 0.0  # the same model twice
    assert all(math.isfinite(v) for v in metrics.values())
    assert all(0.0 <= metrics[k] <= 1.0 for k in metrics if k.endswith("_rate") or k == "helpful_accuracy")
    assert len(judged) == len(prompts) and 1 <= metrics["length"] <= 6
    # same seed, same samples
    assert evaluate_policy(policy, tok, prompts, max_new_tokens=6) == evaluate_policy(policy, tok, prompts,
                                                                                      max_new_tokens=6)
    # another policy drifts away from the reference: KL estimated from its own samples is positive
    _, other, _ = tiny_models(seed=1)
    with torch.no_grad():  # sharpen its distribution, so the KL estimate is large compared with its noise
        other.lm_head.weight.mul_(20)
    assert evaluate_policy(other, tok, prompts * 4, ref_model=policy, max_new_tokens=6)["kl"] > 0.5


def test_table_and_command_line(tmp_path, capsys):
    columns = {"sft": {"gold": 0.1, "kl": 0.0}, "ppo": {"gold": 0.5}}
    table = format_table(columns).splitlines()
    assert table[0].split() == ["metric", "sft", "ppo"] and len(table) == 3  # rows no column has are left out
    assert table[1].split()[-2:] == ["0.100", "0.500"] and table[2].split()[-2:] == ["0.000", "-"]

    tok, policy, rm = tiny_models()
    sft, ppo = str(tmp_path / "sft" / "ckpt.pt"), str(tmp_path / "ppo.pt")
    save_checkpoint(sft, policy, stage="sft", tokenizer_name="lab")
    save_checkpoint(ppo, tiny_models(1)[1], stage="ppo", tokenizer_name="lab")
    save_checkpoint(str(tmp_path / "rm.pt"), rm, stage="rm", tokenizer_name="lab")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": world.eval_tasks(0, 1)[0].prompt, "chosen": " a", "rejected": " b"}) + "\n")
    main([sft, ppo, f"mine={ppo}", "--rm", str(tmp_path / "rm.pt"), "--ref", sft, "--n_per_family", "1",
          "--max_new_tokens", "4", "--show", "1", "--pairs", str(pairs), "--json", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "sft", "ppo", "mine"]  # folder, file name, NAME=PATH
    assert "RM score (proxy)" in out and "KL to ref" in out and "RM accuracy on" in out and "[sft] " in out
    assert "RM vs gold on every lab prompt" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) == {"sft", "ppo", "mine", "rm_probe"}
    assert report["sft"]["kl"] == 0.0 and report["mine"] == report["ppo"]
    assert set(report["rm_probe"]) == {f"rm_probe/{f}" for f in world.FAMILIES} | {"rm_probe/sum_top"}


def test_rm_probe_against_the_gold_judge():
    """A scorer that is the gold judge has no blind spots; its negative fails everywhere; one that likes big
    numbers ranks the right sum on top only where no candidate is bigger, which never happens among 0..12."""
    by_gold = lambda pairs: [gold(p, r).score for p, r in pairs]  # noqa: E731
    assert set(rm_blind_spots(by_gold).values()) == {1.0}
    assert set(rm_blind_spots(lambda pairs: [-x for x in by_gold(pairs)]).values()) == {0.0}

    def likes_big_numbers(pairs):
        return [float(max([int(n) for n in re.findall(r"\d+", r)] or [0])) for _, r in pairs]
    probe = rm_blind_spots(likes_big_numbers)
    assert probe["rm_probe/sum_top"] == 0.0
    # a wrong sum is 1 to 3 away from the right one, above or below, so about half the flawed sums are bigger
    assert 0.3 < probe["rm_probe/arithmetic"] < 0.7


def test_plot_of_gold_and_proxy_against_kl(tmp_path):
    pytest.importorskip("matplotlib")
    log = tmp_path / "log.jsonl"
    with open(log, "w") as f:
        for i in range(10):  # the proxy keeps rising, gold peaks and falls; gold is logged every other line
            row = {"iter": i, "objective/kl": 0.5 * i, "objective/rm_score": 0.3 * i}
            if i % 2 == 0:
                row["lab/gold"] = 0.2 * i - 0.03 * i * i
            f.write(json.dumps(row) + "\n")
    out = plot_runs([str(log)], str(tmp_path / "plot.png"))
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    main(["--plot", str(log), str(log), "--plot_out", str(tmp_path / "two.png")])  # two runs, one figure
    assert (tmp_path / "two.png").stat().st_size > 1000
    main(["--plot", f"{log},{log}", "--plot_out", str(tmp_path / "rounds.png")])  # two rounds, one run
    width = lambda path: int.from_bytes(open(path, "rb").read()[16:20], "big")  # noqa: E731 (PNG header)
    assert width(tmp_path / "rounds.png") > 1.8 * width(out)  # a panel per round: each its own reward model


def test_plot_curve_runs_along_kl_not_along_iterations():
    # KL goes back and forth over iterations; the curve is bin means in order of KL, so it never turns back
    points = [(0.1, 1.0), (0.5, 5.0), (0.2, 2.0), (0.4, 4.0), (0.3, 3.0), (0.6, 6.0)]
    xs, ys = _binned_means(points, size=2)
    assert xs == pytest.approx([0.15, 0.35, 0.55]) and ys == pytest.approx([1.5, 3.5, 5.5])


def test_samples_per_prompt_average_every_response(tmp_path, capsys):
    """--samples_per_prompt K answers each prompt K times: the gold row is the mean of all K x N printed verdicts."""
    tok, policy, _ = tiny_models()
    path = str(tmp_path / "sft.pt")
    save_checkpoint(path, policy, stage="sft", tokenizer_name="lab")
    main([f"m={path}", "--n_per_family", "1", "--samples_per_prompt", "3", "--max_new_tokens", "4", "--show", "100",
          "--json", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    shown = [line for line in out.splitlines() if line.startswith("[m] ")]
    assert len(shown) == 3 * len(world.FAMILIES)
    questions = [line.split(" ->")[0] for line in shown]
    assert all(questions.count(q) == 3 for q in questions)
    golds = [float(line.rsplit("gold ", 1)[1]) for line in shown]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["m"]["gold"] == pytest.approx(sum(golds) / len(golds), abs=0.006)  # printed to 2 decimals
    assert f"{len(world.FAMILIES)} held-out prompts x 3 samples" in out
