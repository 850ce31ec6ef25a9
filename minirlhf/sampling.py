"""Sampling responses from a checkpoint, and scoring them by reward model (sequence log-probs, for KL, are
scoring.sequence_logprobs).

Shared by sample.py, the lab's labelling step (pairs sampled from the SFT model) and its evaluation report.

A sampled response is the model's tokens up to and including its first end-of-text. The text handed to the
gold judge and written to JSONL is the decoded text *before* the end-of-text, with `ended` saying whether
there was one (a response cut off at max_new_tokens has ended=False).
"""

from dataclasses import dataclass

import torch

from minirlhf.data import encode_prompt, left_pad
from minirlhf.scoring import last_token_scores


@dataclass
class Sample:
    prompt: str
    text: str  # decoded response, end-of-text excluded
    ended: bool  # the model produced an end-of-text
    prompt_ids: list
    response_ids: list  # sampled ids, end-of-text included when ended


@torch.no_grad()
def sample_responses(model, tok, prompts, *, max_new_tokens=32, temperature=1.0, batch_size=64, seed=0, top_k=None,
                     top_p=None):
    """One sampled response per prompt (repeat a prompt in `prompts` to get several). temperature 0 = greedy;
    top_k / top_p truncate the distribution (sample.py's options; PPO and the lab's pipeline never use them).

    Prompts are left-padded into batches so that every row's next token goes in the same column; a torch
    Generator seeded with `seed` makes the samples reproducible for the same prompts in the same order.
    """
    generator = torch.Generator(device=model.lm_head.weight.device).manual_seed(seed)
    max_prompt = model.config.block_size - max_new_tokens
    samples = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        prompt_ids = [encode_prompt(tok, p, max_prompt)[0] for p in batch]
        idx, mask = left_pad(prompt_ids, tok.pad_token)  # (B, T)
        device = model.lm_head.weight.device
        tokens, out_mask = model.generate(idx.to(device), mask.to(device), max_new_tokens,
                                          eos_token_id=tok.eot_token, pad_token_id=tok.pad_token,
                                          temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        T = idx.size(1)
        for b, prompt in enumerate(batch):
            response = tokens[b, T:][out_mask[b, T:]].tolist()  # up to and including the first eot
            ended = len(response) > 0 and response[-1] == tok.eot_token
            text = tok.decode(response[:-1] if ended else response)
            samples.append(Sample(prompt, text, ended, prompt_ids[b], response))
    return samples


def pack(samples, pad_id):
    """Samples -> prompt + response, left-padded: (ids (B, T), attention_mask (B, T), response_mask (B, T)).

    Left padding puts every row's last real token in the last column, where the reward model reads its score.
    """
    seqs = [s.prompt_ids + s.response_ids for s in samples]
    ids, mask = left_pad(seqs, pad_id)
    response_mask = torch.zeros_like(mask)
    for i, s in enumerate(samples):
        if s.response_ids:
            response_mask[i, -len(s.response_ids):] = 1
    return ids, mask, response_mask


@torch.no_grad()
def reward_scores(reward_model, ids, mask, reward_mean=0.0, reward_std=1.0):
    """Reward-model score at the last real token (the last column of a left-padded batch), normalised: (B,)."""
    return (last_token_scores(reward_model, ids, mask, start=ids.size(1) - 1) - reward_mean) / reward_std


def batched(fn, samples, pad_id, batch_size=64, device="cpu"):
    """fn(ids, mask, response_mask) over samples in batches -> one concatenated (N,) tensor on the CPU."""
    out = []
    for start in range(0, len(samples), batch_size):
        ids, mask, response_mask = pack(samples[start:start + batch_size], pad_id)
        out.append(fn(ids.to(device), mask.to(device), response_mask.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)
