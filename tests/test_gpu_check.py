"""bench/gpu_check.py --smoke: the one-GPU check runs end to end on CPU with tiny shapes (every section that can
run without CUDA) and writes its results file; a section runs as a child process, is stopped at its budget and
skipped when no time is left; the peak-memory estimates it reads from the runs/ flags files agree with the
arithmetic of runs/hh_rlhf.sh redone here from each file's own flags; its JUnit summary and its verdicts on the
issue's targets match hand-made inputs; without --out a smoke run writes to an ignored folder. The full smoke run
goes on in a fresh interpreter in the background from collection (conftest.py), beside the other tests.

    python -m pytest tests/test_gpu_check.py -q
"""
import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

import train_ppo
import train_rm
import train_sft
from minirlhf.model import GPT, GPTConfig
from minirlhf.training import parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "bench", "gpu_check.py"))
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


ENV = dict(os.environ)  # taken at import: in_background runs while other tests may monkeypatch os.environ
SMOKE = """import json, sys, warnings
out, sys.argv = sys.argv[1], ["bench/gpu_check.py", "--smoke"]  # what the script sees when run as one
warnings.simplefilter("ignore", RuntimeWarning)
sys.path.insert(0, "bench")
import gpu_check
results, path = gpu_check.main(["--smoke", "--inprocess", "--out", out])
with open(path) as f:
    assert json.load(f) == json.loads(json.dumps(results)), "the results file is not what main() returned"
print(path)
"""


def in_background(tmp):
    """The smoke run, every section in one fresh interpreter (conftest.py starts it at collection, beside the other
    tests); it checks that the results file holds what main() returned, and prints the file's path."""
    return subprocess.run([sys.executable, "-c", SMOKE, str(tmp)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)


def test_smoke_runs_every_section_and_writes_results(background):
    assert background.returncode == 0, background.stdout[-2000:] + background.stderr[-3000:]
    with open(background.stdout.split()[-1]) as f:
        results = json.load(f)
    sections = results["sections"]
    assert {name: r["status"] for name, r in sections.items()} == {name: "ok" for name in sections}
    assert set(sections) | set(results["skipped"]) == set(gpu_check.SECTIONS)
    assert sections["tests"]["counts"]["failed"] == 0 and sections["tests"]["counts"]["skipped"] > 0  # no CUDA here
    ours = [r for r in sections["kernels"]["rows"] if r["provider"] == "minirlhf"]
    assert len(ours) == 2 and all("error" not in r and r["rel_err_vs_torch"] < 1e-5 for r in ours)
    assert all("error" in r for r in sections["kernels_compile"]["rows"])  # torch.compile: skipped, and says why
    assert all(r["kv_cache_tok_s"] > 0 for r in sections["generate"]["rows"])
    assert sections["generate"]["rows"][0]["tokens_identical"]
    assert sections["lora_ppo_xl"]["peak_GB"] > 0 and sections["lora_ppo_xl"]["estimate_GB"] > 0  # LoRA PPO step
    walk = sections["walk:hh_gpt2_80gb"]["stages"]
    assert list(walk) == ["sft", "rm", "ppo", "dpo"]
    for stage, r in walk.items():
        assert "error" not in r and r["steps_logged"] == 2 and r["s_per_step"] > 0, (stage, r)
        assert r["estimate_GB"] > 0
    ppo = sections["ppo_vs_trl"]
    assert ppo["minirlhf"]["s_per_iter"] > 0 and ppo["settings"]["iters_timed"] == 2
    if importlib.util.find_spec("trl") is None:
        assert ppo["trl"].startswith("skipped")
    assert all(t["met"] is None for t in results["targets"].values())  # nothing at the targets' shapes on CPU


def test_sections_run_as_children_with_budgets(tmp_path, monkeypatch):
    results, _ = gpu_check.main(["--smoke", "--sections", "env", "--out", str(tmp_path)])
    env = results["sections"]["env"]
    assert env["status"] == "ok" and env["torch"] == torch.__version__ and env["copy_GBps"] > 0
    monkeypatch.setitem(gpu_check.SECTIONS, "env", (30, 0.3))  # python + torch cannot start in 0.3 s
    results, _ = gpu_check.main(["--smoke", "--sections", "env", "--out", str(tmp_path)])
    assert results["sections"]["env"]["status"] == "stopped at its budget of 0 s"
    results, _ = gpu_check.main(["--smoke", "--sections", "env,tests", "--budget", "5", "--out", str(tmp_path)])
    assert results["sections"] == {} and all(why.startswith("not started") for why in results["skipped"].values())
    assert len(glob.glob(str(tmp_path / "gpu_smoke_cpu.json"))) == 1


def test_smoke_results_default_to_an_ignored_folder():
    """Without --out a smoke run writes under out/ (ignored by git), never into bench/results/."""
    results, path = gpu_check.main(["--smoke", "--sections", "env", "--budget", "5"])  # nothing starts in 5 s
    assert results["sections"] == {} and path == os.path.join(ROOT, "out", "gpu_check", "gpu_smoke_cpu.json")
    ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
    assert ignored.returncode in (0, 128)  # 0: ignored; 128: not a git checkout (an unpacked release)


def params(preset):
    with torch.device("meta"):
        return GPT(GPTConfig.preset(preset)).num_params()


@pytest.mark.parametrize("config", ["hh_gpt2_24gb", "hh_gpt2_80gb", "hh_gpt2-medium_24gb", "hh_gpt2-medium_80gb"])
def test_flags_file_estimates_match_their_arithmetic(config):
    """runs/hh_rlhf.sh's formulas, from each file's flags: 16 B/param (+ 24 for PPO's second trained model and two
    frozen ones), 40 n_embd n_layer bytes of activations a token, 2 x 50258 bf16 bytes of logits and gradient."""
    preset = "gpt2-medium" if "medium" in config else "gpt2"
    cfg, P = GPTConfig.preset(preset), params(preset)
    act, logits = 40 * cfg.n_embd * cfg.n_layer, 2 * 2 * 50258
    sft = parse_args(train_sft.Args, [f"@{ROOT}/runs/{config}/sft.args"])
    rm = parse_args(train_rm.Args, [f"@{ROOT}/runs/{config}/rm.args"])
    ppo = parse_args(train_ppo.Args, [f"@{ROOT}/runs/{config}/ppo.args"])
    T = ppo.max_prompt_len + ppo.max_new_tokens
    expected = {
        "sft": 16 * P + sft.micro_batch_size * 1024 * (act + (0 if sft.fused_logprobs else logits)),
        "rm": 16 * P + 2 * rm.micro_batch_size * 1024 * act,
        "ppo": max(40 * P + ppo.micro_batch_size * T * 2 * act,  # update: policy and value model train
                   32 * P + ppo.batch_size * T * 2 * cfg.n_layer * cfg.n_embd * 4),  # rollout: fp32 KV cache
    }
    for stage, bytes_ in expected.items():
        parsed, text = gpu_check.flags_file_estimate(f"{ROOT}/runs/{config}/{stage}.args")
        assert text.startswith("Peak memory")
        assert parsed == pytest.approx(bytes_ / 1e9, rel=0.1), (stage, parsed, bytes_ / 1e9)
    dpo = gpu_check.dpo_estimate_gb(P, cfg.n_layer, cfg.n_embd, sft.micro_batch_size // 2, sft.fused_logprobs)
    assert sft.micro_batch_size % 2 == 0 and dpo == pytest.approx(expected["sft"] / 1e9)  # pairs: SFT's tokens


def test_junit_summary_and_targets_on_hand_made_inputs(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite><testcase name="a" time="1.5"/><testcase name="b" time="2">'
                   '<failure message="boom"/></testcase><testcase name="c"><skipped message="no GPU"/></testcase>'
                   '</testsuite></testsuites>')
    s = gpu_check.junit_summary(str(xml))
    assert s["counts"] == {"passed": 1, "failed": 1, "error": 0, "skipped": 1}
    assert [(c["name"], c["outcome"], c["seconds"], c["message"]) for c in s["cases"]] == [
        ("a", "passed", 1.5, None), ("b", "failed", 2.0, "boom"), ("c", "skipped", 0.0, "no GPU")]

    def row(kernel, provider, frac, ms, H=None, peak=None):
        return {"kernel": kernel, "provider": provider, "N": 8192, "V": 50257, "H": H, "frac_fwd+bwd": frac,
                "fwd+bwd": [ms, ms, ms], "peak_mb": peak}
    rows = [row("logprobs", "minirlhf", 0.92, 1.0), row("logprobs", "liger", 0.8, 1.1), row("full_kl", "minirlhf", 0.7, 2),
            row("linear_logprobs", "minirlhf", 0.75, 3, 768, 10), row("linear_logprobs", "torch", 0.3, 9, 768, 1000)]
    t = gpu_check.targets({"sections": {"kernels": {"rows": rows}, "ppo_vs_trl": {"trl_over_minirlhf": 2.5}}})
    met = {k: v["met"] for k, v in t.items()}
    assert met == {
        "logprobs fwd+bwd >= 90 % of the 3-pass floor, N 8192 V 50257 bf16": True,
        "logprobs fwd+bwd not slower than Liger": True,
        "full_kl fwd+bwd >= 80 % of its floor": False,
        "linear_logprobs fwd+bwd >= 70 % of the matmul floor, H 768": True,
        "linear_logprobs peak memory <= 2 % of eager, H 768": True,  # 10 / 1000
        "linear_logprobs fwd+bwd >= 70 % of the matmul floor, H 4096": None,  # not measured
        "linear_logprobs peak memory <= 2 % of eager, H 4096": None,
        "PPO iteration at GPT-2 124M >= 3x TRL's": False}
    smoke = gpu_check.targets({"smoke": True, "sections": {"ppo_vs_trl": {"trl_over_minirlhf": 5.0}}})
    assert smoke["PPO iteration at GPT-2 124M >= 3x TRL's"]["met"] is None  # a tiny model is not the target's shape
