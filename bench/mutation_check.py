"""Mutation check: does the test suite fail when the RL math is wrong?

    python bench/mutation_check.py            # every mutation (about 10 minutes on 2 busy cores)
    python bench/mutation_check.py --only 7   # one of them
    python bench/mutation_check.py --list     # the list, nothing run

Each entry below is a one-line defect of the kind that leaves a run training, quietly wrong. The script copies
the repository to a temporary folder, runs the targeted tests once on the unchanged copy (they must pass), then
applies one mutation at a time (an exact substring, which must occur exactly once in its file, so that the list
cannot rot silently when the code changes), runs its tests with `pytest -x -q` under a time limit, and restores
the file. A mutation is killed when the tests fail. It prints a table and the kill rate, and exits non-zero
unless every mutation is killed.

When a real bug is found, add it here as a mutation: the test that caught it then keeps it caught.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PPO = ["tests/test_ppo_math.py", "tests/test_ppo_reference.py"]
REF = ["tests/test_rl_reference.py"]
DPO = ["tests/test_dpo.py::test_loss_matches_the_formula"]
LORA = ["tests/test_lora.py", "tests/test_lora_scripts.py"]

# (file, exact code substring, its replacement, what goes wrong, tests that must fail)
MUTATIONS = [
    ("minirlhf/scoring.py", "model(tokens, mask, start=start - 1)[:, :-1]", "model(tokens, mask, start=start)",
     "log-probs one position off: logits at t score token t", REF + PPO),
    ("minirlhf/scoring.py", "kernels.logprobs(logits, targets, temperature=temperature,",
     "kernels.logprobs(logits, targets, temperature=1.0,", "log-probs ignore the sampling temperature", REF + PPO),
    ("minirlhf/scoring.py", "last = tail.size(1) - 1 - tail.flip(1).argmax(1)", "last = tail.argmax(1)",
     "reward read at the first real token instead of the last", PPO),
    ("minirlhf/model.py", 'logits[:, pad_token_id] = float("-inf")', "logits[:, pad_token_id] += 0.0",
     "pad token left samplable in generate()", REF),
    ("train_sft.py", "lm = loss_mask[:, 1:].float()", "lm = mask[:, 1:].float()",
     "SFT loss counts the prompt tokens", REF),
    ("train_sft.py", "sum(m[2][:, 1:].sum().item()", "sum(m[1][:, 1:].sum().item()",
     "SFT loss divided by all tokens, not response tokens", REF),
    ("train_sft.py", "loss_mask[i, len(p): len(p) + len(r)] = 1", "loss_mask[i, len(p) + 1: len(p) + len(r)] = 1",
     "SFT loss skips the first response token", REF),
    ("train_sft.py", "loss = loss_sum / n_tokens * rt.world_size",
     "loss = loss_sum / loss_mask[:, 1:].sum() / n_micro * rt.world_size", "SFT loss a mean of micro-batch means", REF),
    ("train_rm.py", "-F.logsigmoid(chosen - rejected)", "-F.logsigmoid(rejected - chosen)",
     "Bradley-Terry loss sign flipped", REF),
    ("train_dpo.py", "return -F.logsigmoid(beta * margin)", "return -F.logsigmoid(-beta * margin)",
     "DPO loss sign flipped", DPO),
    ("train_dpo.py", "(margin - 1 / (2 * beta)) ** 2", "(margin - 1 / beta) ** 2", "IPO target margin wrong", DPO),
    ("train_ppo.py", "next_advantage = delta + gamma * lam * next_advantage",
     "next_advantage = delta + gamma * next_advantage", "GAE without lambda", PPO),
    ("train_ppo.py", "values[:, t + 1] if t + 1 < R", "values[:, t] if t + 1 < R",
     "GAE bootstraps from V(s_t) instead of V(s_t+1)", PPO),
    ("train_ppo.py", "return (x - mean) / math.sqrt(var + 1e-8) * m", "return x / math.sqrt(var + 1e-8) * m",
     "whitening without centring", PPO),
    ("train_ppo.py", "masked_whiten(advantages, response_mask, rt)", "masked_whiten(advantages, torch.ones_like(response_mask), rt)",
     "advantages whitened over padding too", PPO),
    ("train_ppo.py", "returns = advantages + values  #", "returns = masked_whiten(advantages, response_mask, rt) + values  #",
     "returns from the whitened advantages", PPO),
    ("train_ppo.py", "pg_losses = torch.max(", "pg_losses = torch.min(", "clipped policy loss with min for max", PPO),
    ("train_ppo.py", "ratio.clamp(1 - args.clip_range, 1 + args.clip_range)", "ratio", "policy ratio never clipped", PPO),
    ("train_ppo.py", "vf_losses = torch.max(", "vf_losses = torch.min(", "clipped value loss with min for max", PPO),
    ("train_ppo.py", "v_clipped = values[idx] +", "v_clipped = returns[idx] +",
     "value clipped around the returns, not the rollout values", PPO),
    ("train_ppo.py", "pg_loss = (pg_losses * mk).sum() / n_valid", "pg_loss = (pg_losses * mk).sum() / mk.sum() / len(chunks)",
     "policy loss a mean of micro-batch means", PPO),
    ("train_ppo.py", "vf_loss = 0.5 * (vf_losses * mk).sum() / n_valid",
     "vf_loss = 0.5 * (vf_losses * mk).sum() / mk.sum() / len(chunks)", "value loss a mean of micro-batch means", PPO),
    ("train_ppo.py", "rewards = -kl_coef * kl", "rewards = kl_coef * kl", "KL penalty sign flipped", PPO),
    ("train_ppo.py", "kl = (logprobs - ref_logprobs) * response_mask", "kl = (ref_logprobs - logprobs) * response_mask",
     "KL estimate reversed: log pi_ref - log pi", PPO),
    ("train_ppo.py", "rewards[torch.arange(rewards.size(0)), last] += scores", "rewards[:, 0] += scores",
     "score placed on the first response token", PPO),
    ("train_ppo.py", "torch.where(ended, raw_scores, torch.full_like(raw_scores, no_eos_score))",
     "torch.where(ended, raw_scores, raw_scores)", "no no_eos_score for a response without end-of-text", PPO),
    ("train_ppo.py", "kl_coef *= 1 + error", "kl_coef *= 1 - error", "adaptive KL controller moves the wrong way", PPO),
    ("train_ppo.py", "return policy, ref_policy,", "return policy.train(), ref_policy,",
     "PPO policy left in train mode (dropout on)", PPO),
    ("train_ppo.py", "value_model, tok, rm_ckpts\n", "value_model.train(), tok, rm_ckpts\n", "value model left in train mode", PPO),
    ("train_ppo.py", "value_model(t, m, start=P - 1)[:, :-1]", "value_model(t, m, start=P)",
     "rollout values one position late: V after the token", PPO),
    ("train_ppo.py", "response_logprobs(ref_policy, t, m, P, args.temperature",
     "response_logprobs(ref_policy, t, m, P, 1.0", "reference log-probs without the temperature", PPO),
    ("train_ppo.py", "args.temperature, return_entropy=True", "1.0, return_entropy=True",
     "update log-probs without the temperature", PPO),
    ("minirlhf/lora.py", "nn.Parameter(torch.zeros(self.out_features, rank,",
     "nn.Parameter(0.01 * torch.randn(self.out_features, rank,", "LoRA B not zero at init: step 0 is not the base model",
     LORA),
    ("minirlhf/lora.py", "self.scaling = alpha / rank", "self.scaling = alpha / math.sqrt(rank)",
     "LoRA scaling alpha / sqrt(r) instead of alpha / r", LORA),
    ("minirlhf/lora.py", "        with adapters_off(self._model):\n            return self._model(*args, **kwargs)",
     "        with contextlib.nullcontext():\n            return self._model(*args, **kwargs)",
     "LoRA reference with the adapters on (the policy itself)", LORA),
    ("minirlhf/lora.py", "h = F.dropout(x, self.dropout, self.training)", "h = F.dropout(x, 0.1, True)",
     "LoRA dropout on in PPO (dropping even in eval mode)", LORA),
    ("minirlhf/lora.py", "if rl and dropout > 0:", "if False:", "LoRA dropout not refused in RL", LORA),
    ("minirlhf/lora.py", "return AdaptersOff(trunk), ValueOnTrunk(trunk)", "return trunk, ValueOnTrunk(trunk)",
     "LoRA PPO's reward read with the value adapters on", LORA),
    ("train_rm.py", "make_batch(mine[i: i + micro_size], rt.device", "make_batch(mine[i: i + micro_size - 1], rt.device",
     "length-sorted micro-batches drop a pair each", ["tests/test_micro_batches.py"]),
    ("train_rm.py", "sequences = [list(t) for t in sequences]",
     "sequences = [pair.chosen.tokens for pair in pairs] + [pair.rejected.tokens for pair in pairs]",
     "training-score quantiles count a response once per pair it is in", ["tests/test_antioveropt.py"]),
    ("minirlhf/model.py", "x = F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight",
     "return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, eps=self.eps)",
     "torch's fused LayerNorm: its gradients' digits depend on the thread count", ["tests/test_threads.py"]),
    ("minirlhf/__init__.py", 'os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")', 'os.environ.setdefault("MKL_CBWR", "AUTO")',
     "MKL's matmuls not in strict mode: their digits depend on the thread count", ["tests/test_threads.py"]),
]


def check_unique(root, file, find):
    with open(os.path.join(root, file)) as f:
        count = f.read().count(find)
    if count != 1:
        raise SystemExit(f"mutation_check: {file}: {find!r} occurs {count} times, not once: update the list")


def run_tests(root, tests, timeout):
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        return proc.returncode, time.time() - t0, proc.stdout[-3000:]
    except subprocess.TimeoutExpired:
        return "timeout", time.time() - t0, ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=int, nargs="*", help="run only these mutation numbers (1-based)")
    parser.add_argument("--list", action="store_true", help="print the list and exit")
    parser.add_argument("--no_baseline", action="store_true", help="skip the run on the unchanged code")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per test run (a timeout counts as killed)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("mutation_check: stopped"))  # the test run and copy go too
    for file, find, _, _, _ in MUTATIONS:  # fail loudly before running anything
        check_unique(ROOT, file, find)
    chosen = args.only or list(range(1, len(MUTATIONS) + 1))
    if args.list:
        for i in chosen:
            print(f"{i:3d}  {MUTATIONS[i - 1][0]:22s} {MUTATIONS[i - 1][3]}")
        return 0
    with tempfile.TemporaryDirectory(prefix="mutation_check_") as tmp:
        root = os.path.join(tmp, "repo")
        shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns(
            ".git", "__pycache__", ".pytest_cache", "out", ".venv", "wandb", "*.egg-info"))
        baseline = sorted({t for i in chosen for t in MUTATIONS[i - 1][4]})
        if not args.no_baseline:
            rc, seconds, out = run_tests(root, baseline, args.timeout * 2)
            if rc != 0:
                raise SystemExit(f"mutation_check: the unchanged code fails its tests ({rc}):\n{out}")
            print(f"unchanged code: {len(baseline)} test targets pass ({seconds:.0f} s)\n")
        print(f"{'#':>3}  {'result':8s} {'time':>6}  {'file':22s} defect")
        killed = 0
        for i in chosen:
            file, find, replace, what, tests = MUTATIONS[i - 1]
            path = os.path.join(root, file)
            original = open(path).read()
            with open(path, "w") as f:
                f.write(original.replace(find, replace))
            try:
                rc, seconds, _ = run_tests(root, tests, args.timeout)
            finally:
                with open(path, "w") as f:
                    f.write(original)
            result = "killed" if rc != 0 else "SURVIVED"
            killed += rc != 0
            print(f"{i:3d}  {result:8s} {seconds:5.0f}s  {file:22s} {what}{' (timeout)' if rc == 'timeout' else ''}",
                  flush=True)
        print(f"\nkill rate: {killed}/{len(chosen)} = {100 * killed / len(chosen):.0f} %")
    return 0 if killed == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
