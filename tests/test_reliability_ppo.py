"""PPO when things go wrong: a NaN stops it cleanly (no IndexError, no bad checkpoint), bad prompts are refused
up front with file and line (and without printing a huge prompt, or deleting the log of the run before), the
prompt picks and the sampler draw from different random streams, and under DDP the loss is the mean over all
ranks' valid tokens (a 2-process gloo run has the gradient of one process holding both ranks' rollouts).

    python -m pytest tests/test_reliability_ppo.py -q
"""

import os
import subprocess
import sys

import pytest
import torch

import train_ppo
from minirlhf.checkpoint import load_checkpoint, save_checkpoint
from minirlhf.data import DataError, write_jsonl
from minirlhf.lab.make_data import make_data
from minirlhf.model import GPT, GPTConfig, ScalarGPT
from minirlhf.tokenizer import get_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("ppo_rel")
    write_jsonl(str(d / "prompts.jsonl"), make_data(seed=0, n_sft=60, n_train_per_family=2)["prompts_train"])
    write_jsonl(str(d / "one_prompt.jsonl"), [{"prompt": "Human: What is 2 + 3?\n\nAssistant:"}] * 4)
    tok = get_tokenizer("lab")
    torch.manual_seed(0)
    sft = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size, block_size=64))
    save_checkpoint(str(d / "sft.pt"), sft, stage="sft", tokenizer_name="lab")
    save_checkpoint(str(d / "rm.pt"), ScalarGPT.from_gpt(sft), stage="rm", tokenizer_name="lab", normalised=True)
    return d


def ppo_args(d, out, **kw):
    return train_ppo.Args(**{**dict(prompts=str(d / "prompts.jsonl"), eval_prompts="", sft_ckpt=str(d / "sft.pt"),
                                    rm_ckpt=str(d / "rm.pt"), out_dir=str(out), num_iters=2, batch_size=8,
                                    num_minibatches=2, micro_batch_size=4, ppo_epochs=1, max_new_tokens=6,
                                    log_samples=0), **kw})


def test_nan_weights_stop_ppo_before_sampling_or_saving(lab, tmp_path):
    # one optimizer step per iteration: the loss is still finite when the weights have gone bad
    with pytest.raises(FloatingPointError):  # was: an IndexError in the sampler, after saving a NaN policy
        train_ppo.main(ppo_args(lab, tmp_path / "ppo", lr=float("inf"), ckpt_interval=1, num_minibatches=1))
    assert not (tmp_path / "ppo" / "ckpt.pt").exists()


def test_bad_prompts_are_refused_up_front_and_the_log_kept(lab, tmp_path):
    out = tmp_path / "ppo"
    os.makedirs(out)
    (out / "log.jsonl").write_text('{"step": 1}\n')  # an earlier run's log: not deleted by a run that fails
    rows = [{"prompt": "Human: What is 2 + 3?\n\nAssistant:", "family": "arithmetic"}] * 2
    write_jsonl(str(tmp_path / "p.jsonl"), rows + [{"prompt": "x" * 1_000_000, "family": "arithmetic"}])
    with pytest.raises(DataError, match=r"p.jsonl:3: field 'prompt' is not a lab prompt") as e:
        train_ppo.main(ppo_args(lab, out, prompts=str(tmp_path / "p.jsonl")))
    assert len(str(e.value)) < 400  # the megabyte prompt is not printed
    write_jsonl(str(tmp_path / "p.jsonl"), rows + [{"prompt": ""}])
    with pytest.raises(DataError, match=r"p.jsonl:3: field 'prompt' is empty"):
        train_ppo.main(ppo_args(lab, out, prompts=str(tmp_path / "p.jsonl")))
    write_jsonl(str(tmp_path / "p.jsonl"), rows + [{"prompt": "Human: " + "What is 2 + 3? " * 20 + "\n\nAssistant:"}])
    with pytest.raises(ValueError, match=r"\(--max_prompt_len 200\) \+ --max_new_tokens 6 > the policy's block_size 64"):
        train_ppo.main(ppo_args(lab, out, prompts=str(tmp_path / "p.jsonl"), max_prompt_len=200))
    assert (out / "log.jsonl").read_text() == '{"step": 1}\n'


def test_prompt_picks_and_sampler_draw_from_different_streams(lab, tmp_path, monkeypatch):
    made, used = [], []
    real_generator, real_generate = train_ppo.step_generator, GPT.generate
    monkeypatch.setattr(train_ppo, "step_generator", lambda *a, **k: made.append(real_generator(*a, **k)) or made[-1])

    def generate(self, *args, generator=None, **kw):
        used.append(generator)
        return real_generate(self, *args, generator=generator, **kw)
    monkeypatch.setattr(GPT, "generate", generate)
    train_ppo.main(ppo_args(lab, tmp_path / "ppo", num_iters=1))
    sampler = used[0]
    picks = made[made.index(sampler) - 1]  # the generator made just before the sampler's: the prompt picks
    assert sampler.initial_seed() != picks.initial_seed()  # they were equal on CPU: row b's pick and first token
    assert not torch.equal(torch.rand(8, generator=real_generator(1337, 0, 0, stream=1)),
                           torch.rand(8, generator=real_generator(1337, 0, 0)))


WORKER = r"""
import os, sys, torch
sys.path.insert(0, {root!r})
import train_ppo
from minirlhf.model import GPT
d, out = sys.argv[1], sys.argv[2]
rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
responses = torch.load(f"{{d}}/responses.pt")[rank * 8 // world: (rank + 1) * 8 // world]

def generate(self, ids, mask, max_new_tokens, pad_token_id, **kw):  # fixed rollouts, of very different lengths
    return torch.cat([ids, responses], 1), torch.cat([mask, (responses != pad_token_id).long()], 1)
GPT.generate = generate
grads, clip = [], torch.nn.utils.clip_grad_norm_
def capture(params, *a, **k):  # called once per model after backward: the gradient DDP averaged
    params = list(params)
    grads.append([p.grad.clone() for p in params])
    return clip(params, *a, **k)
torch.nn.utils.clip_grad_norm_ = capture
train_ppo.main(train_ppo.Args(prompts=f"{{d}}/one_prompt.jsonl", eval_prompts="", sft_ckpt=f"{{d}}/sft.pt",
    rm_ckpt=f"{{d}}/rm.pt", out_dir=out, num_iters=1, batch_size=8, num_minibatches=1, micro_batch_size=4,
    ppo_epochs=1, max_new_tokens=responses.size(1), log_samples=0, grad_clip=0.0, lr=1e-3, value_lr=1e-3))
if rank == 0:
    torch.save(grads, f"{{out}}/grads.pt")
"""


def test_ddp_ppo_loss_is_the_mean_over_all_ranks_valid_tokens(lab, tmp_path):
    tok = get_tokenizer("lab")
    torch.manual_seed(1)
    responses = torch.randint(0, tok.eot_token, (8, 6))
    for row, n in enumerate([6, 6, 5, 6, 1, 2, 1, 3]):  # rank 0 holds 23 valid tokens, rank 1 holds 7
        if n < 6:
            responses[row, n - 1], responses[row, n:] = tok.eot_token, tok.pad_token
    torch.save(responses, lab / "responses.pt")
    (tmp_path / "worker.py").write_text(WORKER.format(root=ROOT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {"single": [sys.executable, str(tmp_path / "worker.py")],
            "ddp": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(tmp_path / "worker.py")]}
    grads = {}
    for name, cmd in runs.items():
        proc = subprocess.run([*cmd, str(lab), str(tmp_path / name)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        grads[name] = torch.load(tmp_path / name / "grads.pt")
    assert len(grads["single"]) == len(grads["ddp"]) == 2  # policy, value model
    for single, ddp in zip(grads["single"], grads["ddp"]):
        for a, b in zip(single, ddp):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), (a - b).abs().max()
    assert load_checkpoint(str(tmp_path / "ddp" / "ckpt.pt"))["step"] == 1
