"""The one model file: GPT-2 in the style of nanoGPT, plus what RLHF needs from it.

- GPT-2's architecture and parameter names (wte, wpe, h.N.attn.c_attn, ...) so Hugging Face GPT-2 weights
  load by name (`GPT.from_pretrained`).
- An attention mask with position ids derived from it: a left-padded row gives the same logits at its real
  tokens as the same row unpadded (prompts are left-padded so generation can append to every row at once).
- `generate`: batched sampling with a KV cache, temperature (top-k / top-p available, off by default), each
  row stopping at its first end-of-text.
- `hidden_states`: the final hidden states without the vocabulary projection, for the fused linear log-prob
  kernel and for the scalar head.
- `ScalarGPT`: the same trunk with one scalar per position instead of logits: reward and value models.

Dropout is configurable and 0 by default: RLHF compares log-probs of the same tokens computed at different
times (rollout, reference, update), and dropout would make them differ for no reason.
"""

import json
import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024  # maximum sequence length (positions)
    vocab_size: int = 50258  # GPT-2's 50257 tokens + our pad token
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # GPT-2 has biases in its Linears and LayerNorms

    @classmethod
    def preset(cls, name, **overrides):
        presets = {
            "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
            "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
            "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
            "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
            "tiny": dict(n_layer=2, n_head=4, n_embd=64, block_size=128),  # tests and CPU smoke runs
            "small": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),  # the lab on a CPU
        }
        if name not in presets:
            raise ValueError(f"unknown model preset {name!r}; choose from {sorted(presets)}")
        return cls(**{**presets[name], **overrides})


class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated for the whole generation."""

    def __init__(self, config, batch_size, max_len, device, dtype):
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.n_embd // config.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled; advanced after the last layer has written


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout, self.layer_idx = config.n_head, config.n_embd, config.dropout, layer_idx

    def forward(self, x, attn_mask, cache=None, start=0):
        """x (B, T, C) -> (B, T - start, C): every position gives keys and values, positions start.. give queries."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if cache is not None:  # append this chunk's keys/values, attend over everything so far
            first, end = cache.length, cache.length + T
            cache.k[self.layer_idx, :, :, first:end] = k
            cache.v[self.layer_idx, :, :, first:end] = v
            k, v = cache.k[self.layer_idx, :, :, :end], cache.v[self.layer_idx, :, :, :end]  # (B, nh, L, hs)
        if start:  # only the last T - start positions ask; is_causal would align them to the first keys instead
            q = q[:, :, start:]
            if attn_mask is None:
                attn_mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[start:]  # (T - start, T)
            else:
                attn_mask = attn_mask[:, :, start:]
        dropout_p = self.dropout if self.training else 0.0
        if attn_mask is None:  # no padding, no cache: the fused causal path
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:  # attn_mask (B, 1, T, L) bool, True = may attend
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T - start, C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class LayerNorm(nn.Module):
    """nn.LayerNorm's math and parameter names, the gain and bias applied after normalising: its fused CPU backward
    sums their gradients in one piece per thread, autograd here sums them the same way on any thread count (so,
    with MKL's strict mode, minirlhf/__init__.py, a CPU run does not depend on it: tests/test_threads.py)."""

    def __init__(self, n, bias=True, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None
        self.eps = eps

    def forward(self, x):
        x = F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight
        return x if self.bias is None else x + self.bias


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask, cache=None, start=0):
        """x (B, T, C) -> (B, T - start, C). start > 0 drops the first positions' outputs, which only the next
        block's attention would read: for the last block, when only positions start.. are wanted."""
        x = x[:, start:] + self.attn(self.ln_1(x), attn_mask, cache, start)
        return x + self.mlp(self.ln_2(x))


def build_attn_mask(key_mask, T):
    """Causal + padding mask for the last T query positions over L = key_mask.size(1) keys.

    key_mask: (B, L) bool, True at real tokens. Returns (B, 1, T, L) bool. Query i (absolute position
    L - T + i) may attend to key j if j <= L - T + i and key j is real. A pad query would then have no key at
    all and softmax would give NaN, so every query may also attend to itself; pad outputs are never used.
    """
    B, L = key_mask.shape
    q_pos = torch.arange(L - T, L, device=key_mask.device)[:, None]  # (T, 1)
    k_pos = torch.arange(L, device=key_mask.device)[None, :]  # (1, L)
    causal = k_pos <= q_pos  # (T, L)
    mask = causal[None] & key_mask[:, None, :]  # (B, T, L)
    return (mask | (k_pos == q_pos)[None])[:, None]  # (B, 1, T, L)


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def hidden_states(self, idx, attention_mask=None, cache=None, position_ids=None, start=0):
        """idx (B, T) -> final hidden states (B, T - start, n_embd) of positions start.., after ln_f, before the
        vocabulary projection.

        attention_mask (B, L) marks real tokens (1) and padding (0); with a cache, L covers the cached positions
        plus these T. Position ids count real tokens only, so left padding shifts nothing.
        start: every block but the last must run on all T positions (later positions attend to earlier ones),
        but the last block's outputs at positions < start are read by nothing. Skipping them saves the last
        block's MLP and output projection there: in RLHF, where only the response is scored, about half of it.
        """
        B, T = idx.size()
        if not 0 <= start < T:
            raise ValueError(f"start {start} outside the {T} positions")
        if cache is None and position_ids is None and attention_mask is not None and _right_padded(attention_mask):
            # Only padding at the end of rows (SFT/RM/DPO batches, responses after end-of-text): causal
            # attention already keeps those pads out of every real token's view, and positions are 0, 1, ...
            attention_mask = None
        if attention_mask is None and cache is None:
            attn_mask = None  # the fast fused causal path
            pos = torch.arange(T, device=idx.device)[None]
        else:
            key_mask = attention_mask.bool()
            attn_mask = build_attn_mask(key_mask, T)
            if position_ids is None:
                position_ids = (key_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            pos = position_ids
        if pos.max() >= self.config.block_size:
            raise ValueError(f"sequence of {int(pos.max()) + 1} positions > block_size {self.config.block_size}")
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, attn_mask, cache, start if i == len(self.transformer.h) - 1 else 0)
        if cache is not None:
            cache.length += T
        return self.transformer.ln_f(x)

    def forward(self, idx, attention_mask=None, start=0, return_hidden=False):
        """idx (B, T) -> logits (B, T - start, vocab_size). Logits at position t score the token at t + 1.

        Positions before start (the prompt, in RLHF) are never projected onto the vocabulary (the
        (B, T, V) logits are the largest tensor in the whole pipeline), nor run through the last block's MLP.
        return_hidden=True stops before the projection and returns the hidden states (B, T - start,
        n_embd), for the fused linear log-prob kernel; it is an option of forward, not a call to hidden_states,
        so that a DDP wrapper is still called.
        """
        h = self.hidden_states(idx, attention_mask, start=start)
        return h if return_hidden else self.lm_head(h)

    @torch.no_grad()
    def generate(self, idx, attention_mask, max_new_tokens, *, eos_token_id, pad_token_id, temperature=1.0,
                 top_k=None, top_p=None, generator=None):
        """Sample continuations of a left-padded prompt batch with a KV cache.

        Returns (tokens (B, T + n), mask (B, T + n) bool) with n <= max_new_tokens. Each row keeps its first
        end-of-text (mask True there) and is pad (mask False) afterwards. temperature=0 means greedy.
        The prompt is one forward pass; each new token is then one forward pass of a single position.
        """
        B, T = idx.shape
        max_new_tokens = min(max_new_tokens, self.config.block_size - T)
        prompt_mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(idx, dtype=torch.bool)
        param = self.lm_head.weight
        cache = KVCache(self.config, B, T + max_new_tokens, param.device, param.dtype)
        mask = prompt_mask  # (B, L): real tokens among everything fed so far
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        h = self.hidden_states(idx, mask, cache, pos, start=T - 1)[:, -1]  # (B, C): only the last position is needed
        pos = pos[:, -1:]  # (B, 1)
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        new_tokens, new_mask = [], []
        for step in range(max_new_tokens):
            logits = self.lm_head(h).float()  # (B, V)
            logits[:, pad_token_id] = float("-inf")  # pad is never a real token
            next_token = sample(logits, temperature, top_k, top_p, generator)  # (B,)
            real = ~done  # a row's end-of-text is real; what a finished row "samples" after it is pad
            next_token = torch.where(real, next_token, torch.full_like(next_token, pad_token_id))
            new_tokens.append(next_token)
            new_mask.append(real)
            done = done | (next_token == eos_token_id)
            if done.all() or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, real[:, None]], dim=1)
            pos = pos + 1
            h = self.hidden_states(next_token[:, None], mask, cache, pos)[:, -1]
        tokens = torch.cat([idx, torch.stack(new_tokens, 1)], dim=1)
        return tokens, torch.cat([prompt_mask, torch.stack(new_mask, 1)], dim=1)

    @classmethod
    def from_pretrained(cls, path, vocab_size=None, **overrides):
        """Load a Hugging Face GPT-2 folder (config.json + model.safetensors or pytorch_model.bin).

        A hub name ("gpt2", "gpt2-medium", ...) is downloaded with huggingface_hub where installed and online.
        vocab_size larger than the checkpoint's adds rows (our pad token) initialised to the mean embedding.
        """
        if not os.path.isdir(path):
            path = _download_hf(path)
        with open(os.path.join(path, "config.json")) as f:
            hf = json.load(f)
        config = GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                           n_head=hf["n_head"], n_embd=hf["n_embd"], **overrides)
        state = _read_hf_state_dict(path)
        model = cls._from_hf_state(config, state)
        if vocab_size is not None and vocab_size > config.vocab_size:
            model.resize_vocab(vocab_size)
        return model

    @classmethod
    def _from_hf_state(cls, config, state):
        model = GPT(config)
        sd = model.state_dict()
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
        for key in sd:
            if key == "lm_head.weight":
                continue  # tied to wte
            hf_key = key.removeprefix("transformer.")
            if hf_key not in state:
                raise KeyError(f"GPT-2 checkpoint has no weight {hf_key!r}")
            w = state[hf_key]
            w = w.t() if key.endswith(HF_CONV1D_WEIGHTS) else w
            if w.shape != sd[key].shape:
                raise ValueError(f"{hf_key}: shape {tuple(w.shape)} but the model expects {tuple(sd[key].shape)}")
            with torch.no_grad():
                sd[key].copy_(w)
        return model

    def resize_vocab(self, vocab_size):
        """Grow the (tied) embedding to vocab_size rows; new rows start at the mean embedding."""
        old = self.lm_head.weight.data
        new = torch.cat([old, old.mean(0, keepdim=True).expand(vocab_size - old.size(0), -1)], 0)
        self.lm_head = nn.Linear(self.config.n_embd, vocab_size, bias=False).to(old.device, old.dtype)
        self.lm_head.weight.data.copy_(new)
        self.transformer.wte = nn.Embedding(vocab_size, self.config.n_embd).to(old.device, old.dtype)
        self.transformer.wte.weight = self.lm_head.weight
        self.config.vocab_size = vocab_size

    def model_args(self):
        return asdict(self.config)


# HF GPT-2 uses Conv1D (weight stored as (in, out)): these four are transposed relative to nn.Linear. Every other
# weight has the same name and shape in both, under "transformer." (lm_head is tied to wte). minirlhf/export.py
# writes the other direction.
HF_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _right_padded(attention_mask):
    """True if every row is real tokens followed by padding: no left padding, no holes."""
    m = attention_mask.bool()
    return bool(m[:, 0].all()) and bool((m[:, 1:] <= m[:, :-1]).all())


def sample(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """logits (B, V) -> token ids (B,). temperature 0 is greedy; top-k / top-p only when asked for."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:  # keep the smallest set of tokens whose probability reaches top_p
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    # Inverse-CDF sampling: one uniform number u per row in (0, total], then the first token whose cumulative
    # probability reaches u. (torch.multinomial draws an exponential per vocabulary entry: 20x slower on a CPU.)
    # u <= the cumsum's last entry, so rounding can never step past the end; a token of probability 0 repeats
    # the entry before it, which reaches u first, so it is never drawn.
    cdf = logits.softmax(-1).cumsum(-1)  # (B, V)
    u = (1 - torch.rand(cdf.size(0), 1, generator=generator, device=cdf.device, dtype=cdf.dtype)) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(-1)


class ScalarGPT(GPT):
    """GPT trunk + a scalar head: one number per position. Reward model (read at the last real token) and
    value model (read at every response position).

    The head starts small (std 1 / sqrt(n_embd + 1)) so initial scores are near 0 whatever the trunk.
    """

    def __init__(self, config):
        super().__init__(config)
        del self.lm_head  # the embedding stays (it is still wte); the vocabulary projection goes
        self.score = nn.Linear(config.n_embd, 1, bias=True)
        torch.nn.init.normal_(self.score.weight, std=1 / math.sqrt(config.n_embd + 1))
        torch.nn.init.zeros_(self.score.bias)

    def forward(self, idx, attention_mask=None, start=0):
        """idx (B, T) -> scalar per position (B, T - start) for positions start.., fp32."""
        return self.score(self.hidden_states(idx, attention_mask, start=start)).squeeze(-1).float()

    def generate(self, *args, **kwargs):
        raise TypeError("ScalarGPT is a reward/value model: it has no vocabulary head to generate with")

    @classmethod
    def from_gpt(cls, gpt):
        """A scalar model whose trunk is a copy of `gpt`'s (the reward model starts from the SFT model)."""
        model = cls(GPTConfig(**gpt.model_args())).to(gpt.transformer.wte.weight.device)
        missing, unexpected = model.load_state_dict(
            {k: v for k, v in gpt.state_dict().items() if k != "lm_head.weight"}, strict=False)
        assert set(missing) <= {"score.weight", "score.bias"} and not unexpected, (missing, unexpected)
        return model


def _read_hf_state_dict(path):
    st = os.path.join(path, "model.safetensors")
    if os.path.exists(st):
        from safetensors.torch import load_file
        return load_file(st)
    bin_path = os.path.join(path, "pytorch_model.bin")
    if os.path.exists(bin_path):
        return torch.load(bin_path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path}: neither model.safetensors nor pytorch_model.bin found")


def _download_hf(name):
    if name not in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        raise FileNotFoundError(f"{name!r} is neither a local GPT-2 folder nor a GPT-2 hub name")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(f"downloading {name!r} needs huggingface_hub (pip install huggingface_hub); "
                          "or pass a local folder holding config.json and model.safetensors") from None
    return snapshot_download(name, allow_patterns=["config.json", "model.safetensors"])
