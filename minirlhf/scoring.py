"""What a model says about a sequence: the RLHF core every stage reads through. Read it right after model.py.

- response_logprobs: log p(token) of the response tokens, the one log-prob function for SFT, the PPO rollout,
  the reference, the PPO update, DPO and RLOO alike (the same function in all of them is what makes PPO's
  first ratio exactly 1);
- sequence_logprobs: their sum over a response, log pi(response | prompt) (DPO, and the lab's KL estimates);
- last_token_scores: a scalar model (reward or value model) read at each row's last real token.

The log-probs come from minirlhf.kernels (fp32 logsumexp; Triton on GPU, the plain PyTorch reference on CPU).
"""

import torch

from minirlhf import kernels


def response_logprobs(model, tokens, mask, start, temperature=1.0, return_entropy=False, fused=False):
    """log p(tokens[:, t]) for t >= start, under `model`, for every stage (rollout, reference, update, DPO).

    tokens, mask: (B, T), prompt + response, left- or right-padded (positions come from the mask).
    Logits at position t score the token at t + 1, so the response tokens tokens[:, start:] are scored by
    logits[:, start - 1 : T - 1]. Only those positions go through the vocabulary projection, and the log-probs
    come from `kernels.logprobs` (fp32 logsumexp; Triton on GPU). Returns (B, T - start) fp32 (and entropy).
    `model` may be DDP-wrapped: it is called, not reached into, so gradients synchronise.

    fused=True never builds the (B, T - start, V) logits: the model returns its hidden states and
    `kernels.linear_logprobs` projects them onto the vocabulary one tile at a time, forward and backward.
    Worth it where the response is long (SFT scores whole sequences: 1024 x 50258 bf16 logits are 100 MB per
    sequence, twice over with their gradient); slower, since the backward recomputes the logits.
    The kernel gives no entropy, so with return_entropy (for logging only) it is computed without gradient from
    the detached hidden states, 1024 rows of logits at a time: the same number, its memory bounded, 25 % more
    head FLOPs.
    """
    targets = tokens[:, start:]
    if not fused:
        logits = model(tokens, mask, start=start - 1)[:, :-1]  # (B, T - start, V): the only logits alive
        return kernels.logprobs(logits, targets, temperature=temperature, return_entropy=return_entropy)
    hidden = model(tokens, mask, start=start - 1, return_hidden=True)[:, :-1]  # (B, T - start, C)
    weight = getattr(model, "module", model).lm_head.weight  # (V, C), tied to wte; its gradient adds up there
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):  # the dtype autocast would give the lm_head matmul (bf16)
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    logprobs = kernels.linear_logprobs(hidden, weight, targets, temperature=temperature)
    if not return_entropy:
        return logprobs
    with torch.no_grad():
        rows = hidden.detach().reshape(-1, hidden.size(-1))  # (N, C)
        entropy = torch.cat([kernels.logprobs(h @ weight.T, torch.zeros_like(h[:, 0], dtype=torch.long),
                                              temperature=temperature, return_entropy=True)[1]
                             for h in rows.split(1024)])
    return logprobs, entropy.view_as(logprobs)


def sequence_logprobs(model, tokens, mask, response_mask, temperature=1.0, fused=False):
    """log pi(response | prompt) = sum over response tokens of log p(token | prefix), by response_logprobs: (B,).

    response_mask (B, T): 1 on the response tokens (left or right padding). Logits are computed from the earliest
    response column on, none for the prompt columns before it. DPO scores chosen and rejected responses with it;
    the lab estimates KL(policy || ref) per sequence as sequence_logprobs(policy) - sequence_logprobs(ref) on the
    policy's own samples. Differentiable: wrap in torch.no_grad() where no gradient is wanted.
    """
    has_response = response_mask.bool().any(1)
    if not has_response.any():
        return torch.zeros(tokens.size(0), device=tokens.device)
    start = max(1, int(response_mask.float().argmax(1)[has_response].min()))  # logits at start - 1 score it
    logprobs = response_logprobs(model, tokens, mask, start, temperature, fused=fused)  # (B, T - start)
    return (logprobs * response_mask[:, start:]).sum(-1)


def last_token_scores(scalar_model, tokens, mask, start=0):
    """A scalar model's output at each row's last real token: (B,). How every stage reads a reward model.

    The reward model is read there: after the end-of-text it has seen the whole response. tokens, mask (B, T),
    left or right padding; start > 0 skips the last block's work on the positions before it (every row's last
    real token must be at or after start; with left padding, start = T - 1 reads the last column alone).
    """
    tail = mask[:, start:].long()  # (B, T - start)
    if not tail.any(1).all():
        raise ValueError(f"last_token_scores: a row has no real token at or after start={start}")
    values = scalar_model(tokens, mask, start=start)  # (B, T - start)
    last = tail.size(1) - 1 - tail.flip(1).argmax(1)  # index of the last 1 in each row
    return values.gather(1, last[:, None]).squeeze(1)


@torch.no_grad()
def exact_kl(model, ref_model, tokens, mask, start, temperature=1.0, micro_batch_size=16):
    """Exact per-token KL(pi || pi_ref) over the whole vocabulary at every response position: (B, T - start).

    A diagnostic, logged beside the KL PPO trains on (objective/kl_exact). The reward's KL term is the sampled
    estimate log pi(a_t) - log pi_ref(a_t) (k1: unbiased, but one token's worth of information, and negative on
    some tokens). Summed over the sampled response, the exact per-token KL has the same expectation, the sequence
    KL (the chain rule of KL), with less variance: logging both shows how noisy the estimate PPO trains on is.
    It costs a second forward of both models and their (micro, R, V) logits, one micro-batch at a time;
    kernels.full_kl streams over the vocabulary (Triton on GPU). Zero after each row's last real token.
    """
    out = []
    for i in range(0, tokens.size(0), micro_batch_size):
        t, m = tokens[i: i + micro_batch_size], mask[i: i + micro_batch_size]
        logits = model(t, m, start=start - 1)[:, :-1]  # (b, R, V): the logits response_logprobs reads
        ref_logits = ref_model(t, m, start=start - 1)[:, :-1]
        out.append(kernels.full_kl(logits, ref_logits, temperature=temperature))  # (b, R) fp32
    return torch.cat(out) * mask[:, start:].float()
