"""PPO when things go wrong: a NaN stops it cleanly (no IndexError, no bad checkpoint), bad prompts are refused
up front with file and line (and without printing a huge prompt, or deleting the log of the run before), the
prompt picks and the sampler draw from different random streams. (Under DDP the loss is the mean over all ranks'
valid tokens: tests/test_ddp.py, with the other DDP runs.)

    python -m pytest tests/test_reliability_ppo.py -q
"""

import os

import pytest
import torch

import train_ppo
from minirlhf.checkpoint import save_checkpoint
from minirlhf.data import DataError, write_jsonl
from minirlhf.lab.make_data import make_data
from minirlhf.model import GPT, GPTConfig, ScalarGPT
from minirlhf.tokenizer import get_tokenizer


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

