"""LoRA: train a low-rank update of each weight matrix, the matrix itself frozen (Hu et al. 2021, "LoRA: Low-Rank
Adaptation of Large Language Models").

The math. A Linear computes y = W x + b with W (out, in). LoRA keeps W frozen and learns two thin matrices,
A (r, in) and B (out, r), with r << min(in, out):

    y = W x + b + (alpha / r) * B A x          the update Delta W = (alpha / r) B A has rank <= r

- A starts random (Kaiming-uniform, as the paper's released code, loralib; the paper says Gaussian), B starts at
  zero: Delta W = 0, so the first forward is exactly the base model's, bit for bit (B A x = 0 adds exact zeros).
  The gradient still flows: dL/dB = (alpha / r) g (A x)^T is not zero although B is.
- alpha / r scales the update so that the learning rate need not change with r (the paper sets alpha to its
  first r and leaves it). RL wants small r and a learning rate about ten times full fine-tuning's.
- merge: W <- W + (alpha / r) B A, and the layer is a plain Linear again (no extra cost at inference);
  unmerge subtracts it (up to rounding: training always runs unmerged, so the trunk's bits never move).
- adapters off: y = W x + b, exactly the base model. This is what makes RLHF cheap: the PPO/DPO/RLOO reference
  is the policy with its adapters off (no second copy), and the reward model is the value model's trunk with
  the value adapters off. Four models, two trunks (`AdaptersOff`, `ValueOnTrunk`).

Parameters. Adapters on every block's attention c_attn (in C, out 3C) and c_proj (C, C), MLP c_fc (C, 4C) and
c_proj (4C, C): r (C + 3C + C + C + C + 4C + 4C + C) = 16 r C per layer. Model weights Np, adapters Na:

    model (C, layers)      Np      Na r=8   Na r=16    r=16: % of Np
    gpt2 (768, 12)        124M     1.18M     2.36M      1.9 %
    gpt2-medium (1024, 24) 355M    3.15M     6.29M      1.8 %
    gpt2-large (1280, 36)  774M    5.90M    11.80M      1.5 %
    gpt2-xl (1600, 48)    1558M    9.83M    19.66M      1.3 %

Memory (bytes per parameter). Full fine-tuning holds fp32 weights, fp32 gradients and AdamW's two fp32
moments: 16 B per trained parameter. With LoRA on a GPU the frozen block matrices are held in the autocast dtype
(bf16, 2 B: no fp32 master copy, no gradient, no optimizer state); embeddings and LayerNorms (a few % of the
weights) stay fp32 so the residual stream keeps fp32 precision (outside autocast, in generation, an adapted
layer then runs its matmul in bf16 and hands back fp32); adapters and heads are fp32 (16 B each, on
about 1-2 % of the weights). GPT-2 XL: 1558M x 16 B = 25 GB to train fully, about 3.3 GB + 0.3 GB with LoRA
r=16. Activations are not smaller: the backward still runs through the whole frozen trunk to reach the early
layers' adapters. bench/bench_memory.py gives the per-stage table, arithmetic beside CPU measurements.

What it cannot do (here):
- adapt the embeddings or lm_head: lm_head is tied to wte, and the fused log-prob kernel reads lm_head.weight
  directly; LayerNorms and biases stay frozen too;
- learn more than a rank-r change per matrix: where full fine-tuning needs a high-rank change, LoRA lags;
- dropout in RL: LoRA dropout perturbs the policy's log-probs at random, so the PPO ratio is not 1 on the
  first minibatch and the KL to the adapters-off reference is noise; it is refused in every RL use (SFT only);
- gradient checkpointing: not implemented here (over a frozen trunk it needs inputs that require grad, a
  classic source of silently missing gradients elsewhere);
- save the trunk: a LoRA checkpoint holds the adapters (and heads) alone with the base checkpoint's path and a
  sha256 of its trunk's weights (minirlhf/checkpoint.py); `python -m minirlhf.lora merge IN OUT` writes a plain
  checkpoint.
"""

import contextlib
import copy
import hashlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

TARGETS = ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")  # "c_proj" names both projections
RL_DROPOUT_REFUSED = ("LoRA dropout must be 0 in RL: it perturbs the policy's log-probs at random, so PPO's ratio "
                      "is not 1 on the first minibatch and the KL to the adapters-off reference is noise")


class LoRALinear(nn.Linear):
    """A Linear (same `weight`, `bias` names, so state dicts and GPT-2 loading are unchanged) plus lora_A, lora_B.

    forward: x (..., in) -> W x + b + (alpha / r) B A dropout(x), (..., out)."""

    def __init__(self, base, rank, alpha, dropout=0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the base layer's own Parameters, not copies
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=base.weight.device))  # (r, in) fp32
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=base.weight.device))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's own init: bound 1 / sqrt(in)
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.scaling = alpha / rank
        self.enabled, self.merged = True, False

    def forward(self, x):
        dtype, autocast = x.dtype, torch.is_autocast_enabled(x.device.type)
        if autocast:  # cast once, so the base and the adapter matmul save one and the same input for the backward
            x = x.to(torch.get_autocast_dtype(x.device.type))
        elif x.dtype != self.weight.dtype:  # bf16 frozen weights outside autocast (generation): a bf16 matmul
            x = x.to(self.weight.dtype)
        y = F.linear(x, self.weight, self.bias)
        if self.enabled and not self.merged:
            h = F.dropout(x, self.dropout, self.training)
            h = h if autocast else h.to(self.lora_A.dtype)  # adapters are fp32 (autocast casts them to bf16)
            y = y + (F.linear(F.linear(h, self.lora_A), self.lora_B) * self.scaling).to(y.dtype)
        return y if autocast else y.to(dtype)  # outside autocast the caller's dtype comes back (fp32 residual)

    def delta_weight(self):
        """(alpha / r) B A, (out, in), computed in float64 and rounded once to the weight's dtype."""
        return (self.lora_B.double() @ self.lora_A.double() * self.scaling).to(self.weight.dtype)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, alpha={self.alpha}, dropout={self.dropout}"


def lora_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def parse_targets(targets):
    """'c_attn,c_proj,c_fc' -> the suffixes of TARGETS they name; refuses anything else, with the reason."""
    names = [t.strip() for t in targets.split(",") if t.strip()] if isinstance(targets, str) else list(targets)
    out = []
    for t in names:
        hits = [full for full in TARGETS if full == t or full.endswith("." + t)]
        if not hits:
            raise ValueError(f"--lora_targets: {t!r} is not one of c_attn, c_proj (attn.c_proj, mlp.c_proj), c_fc. "
                             "Embeddings and lm_head are not adapted: lm_head is tied to wte and the fused log-prob "
                             "kernel reads its weight directly")
        out += [h for h in hits if h not in out]
    if not out:
        raise ValueError("--lora_targets: empty")
    return out


def add_lora(model, rank, alpha, targets="c_attn,c_proj,c_fc", dropout=0.0, trained=(), rl=True, base=None):
    """Put adapters on `model`'s transformer blocks in place, freeze everything else; returns the model.

    trained: names of parameters that train in full beside the adapters (a reward or value head: "score.").
    rl: refuse dropout (see RL_DROPOUT_REFUSED). base: what checkpoint.save_checkpoint records as the trunk's
    origin (the base checkpoint's path); its sha256 is taken here, before any adapter exists.
    Afterwards `adamw(model, lr)` trains exactly the adapters and `trained` (it takes what requires grad)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if not 0 <= dropout < 1:
        raise ValueError(f"--lora_dropout must be in [0, 1), got {dropout}")
    if rl and dropout > 0:
        raise ValueError(f"--lora_dropout {dropout}: {RL_DROPOUT_REFUSED}")
    if lora_layers(model):
        raise ValueError("this model already has LoRA adapters")
    suffixes = parse_targets(targets)
    trunk_hash = trunk_sha256(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.Linear and full.startswith("transformer.h.") and full.endswith(tuple(suffixes)):
                setattr(module, child_name, LoRALinear(child, rank, alpha, dropout))
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n or n.startswith(tuple(trained)))
    model.lora_config = dict(rank=rank, alpha=alpha, targets=suffixes, dropout=dropout, trained=list(trained),
                             base=base, base_sha256=trunk_hash)
    return model


def from_args(model, args, base, trained=(), rl=True):
    """The scripts' one call: LoRA from --lora_rank / --lora_alpha / --lora_targets (/ --lora_dropout, SFT only),
    on a loaded model; --lora_rank 0 returns it untouched (full fine-tuning). On a GPU under bf16 autocast the
    frozen matrices go to bf16 (frozen_to). `adamw(model, lr)` then trains what requires grad: the adapters."""
    if not getattr(args, "lora_rank", 0):
        return model
    if str(base).startswith("scratch:"):
        raise ValueError(f"--lora_rank with --init_from {base}: LoRA adapts a trained model; a random one has "
                         "nothing to keep frozen")
    model = add_lora(model, args.lora_rank, args.lora_alpha, args.lora_targets, getattr(args, "lora_dropout", 0.0),
                     trained, rl, base)
    if getattr(args, "dtype", "") == "bfloat16" and next(model.parameters()).device.type == "cuda":
        frozen_to(model, torch.bfloat16)
    return model


def rl_policy(policy, args):
    """(policy, reference) for PPO/RLOO with --lora_rank: adapters on the SFT trunk, and that trunk with its
    adapters off. `policy` is load_model(--policy_ckpt or --sft_ckpt): a LoRA SFT checkpoint arrives merged,
    so the reference is always the SFT model. A --policy_ckpt (iterated RLHF) must be adapters on --sft_ckpt:
    they are put back unmerged on the SFT trunk, so that turning them off still gives the SFT model."""
    if not getattr(args, "policy_ckpt", ""):
        policy = from_args(policy, args, base=args.sft_ckpt)
        return policy, AdaptersOff(policy)
    from minirlhf.checkpoint import load_checkpoint, load_model  # (checkpoint.py imports this module)

    ckpt = load_checkpoint(args.policy_ckpt, expect="gpt")
    sft = load_model(args.sft_ckpt, expect="gpt", device=next(policy.parameters()).device)[0]
    if "lora" not in ckpt or ckpt["lora"]["base_sha256"] != trunk_sha256(sft):
        raise ValueError(f"--policy_ckpt {args.policy_ckpt} with --lora_rank: the reference is the policy with its "
                         f"adapters off, so the policy must be LoRA adapters on --sft_ckpt {args.sft_ckpt}; this one "
                         f"is {'adapters on another base' if 'lora' in ckpt else 'a plain model'}")
    cfg = ckpt["lora"]
    policy = add_lora(sft, cfg["rank"], cfg["alpha"], cfg["targets"], base=args.sft_ckpt)
    load_trained_state_dict(policy, ckpt["model"])
    if getattr(args, "dtype", "") == "bfloat16" and next(policy.parameters()).device.type == "cuda":
        frozen_to(policy, torch.bfloat16)
    return policy, AdaptersOff(policy)


def value_on_reward_trunk(reward_model, args):
    """PPO with --lora_rank: (reward model, value model) on one trunk. The value model is adapters + a value
    head (a copy of the reward head) on the reward model's trunk; the reward model is that trunk with the
    adapters off. With an ensemble, the first member's trunk carries the value model (as without LoRA, where
    the value model starts from the first member)."""
    members = getattr(reward_model, "members", None)
    first = members[0] if members is not None else reward_model
    trunk = from_args(first, args, base=args.rm_ckpt.split(",")[0])
    if members is None:
        return AdaptersOff(trunk), ValueOnTrunk(trunk)
    members[0] = AdaptersOff(trunk)  # a view holds no parameters: freezing the ensemble leaves the adapters alone
    return reward_model, ValueOnTrunk(trunk)


def is_lora(model):
    return hasattr(getattr(model, "module", model), "lora_config")


@contextlib.contextmanager
def adapters_off(model):
    """Within the block `model` is its base model exactly: every LoRALinear computes W x + b alone."""
    layers = [m for _, m in lora_layers(getattr(model, "module", model))]
    if any(m.merged for m in layers):
        raise RuntimeError("adapters_off on a merged model: its weights hold the adapters; unmerge first")
    before = [m.enabled for m in layers]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m, on in zip(layers, before):
            m.enabled = on


class AdaptersOff(nn.Module):
    """`model` seen with its adapters off: the PPO/RLOO/DPO reference (the policy's trunk) and the reward model
    (the value model's trunk). A view, not a copy: it registers no parameters, so requires_grad_(False) or
    .eval() on it leaves the adapters alone, and any call (forward, generate, num_params, config, lm_head ...)
    reaches the model, a call that computes running inside adapters_off."""

    def __init__(self, model):
        super().__init__()
        object.__setattr__(self, "_model", model)  # not a submodule: invisible to parameters() and state_dict()

    def forward(self, *args, **kwargs):
        with adapters_off(self._model):
            return self._model(*args, **kwargs)

    def __getattr__(self, name):
        attr = getattr(object.__getattribute__(self, "_model"), name)
        if callable(attr) and not isinstance(attr, nn.Module) and name in ("generate", "hidden_states"):
            def call(*args, **kwargs):
                with adapters_off(self._model):
                    return attr(*args, **kwargs)
            return call
        return attr


class ValueOnTrunk(nn.Module):
    """PPO's value model on the reward model's trunk: the trunk with its (value) adapters on, and a value head of
    its own, initialised from the reward head. The reward model is AdaptersOff(trunk): the same trunk, adapters
    off, the reward head. Call signature of a ScalarGPT: forward(idx, attention_mask, start) -> (B, T - start)."""

    def __init__(self, trunk):
        super().__init__()
        self.trunk = trunk  # a ScalarGPT with adapters (add_lora); its own `score` is the frozen reward head
        self.score = copy.deepcopy(trunk.score).float().requires_grad_(True)
        self.config = trunk.config

    def forward(self, idx, attention_mask=None, start=0):
        return self.score(self.trunk.hidden_states(idx, attention_mask, start=start)).squeeze(-1).float()

    def num_params(self):
        return self.trunk.num_params() + sum(p.numel() for p in self.score.parameters())


def trained_state_dict(model):
    """What training changes, to save: adapters and fully trained heads under LoRA; the whole state otherwise."""
    model = getattr(model, "module", model)
    sd = model.state_dict()
    if not any("lora_" in k for k in sd):
        return sd
    keep = tuple(getattr(model, "lora_config", {}).get("trained", ())) + (("score.",) if isinstance(model, ValueOnTrunk) else ())
    return {k: v for k, v in sd.items() if "lora_" in k or k.startswith(keep)}


def load_trained_state_dict(model, state):
    """Inverse of trained_state_dict: every key of `state` must exist in the model; under LoRA the missing keys may
    only be the frozen trunk's."""
    model = getattr(model, "module", model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    trained = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    frozen = set(model.state_dict()) - trained
    if unexpected or (set(missing) - frozen) or (missing and not is_lora(model) and not isinstance(model, ValueOnTrunk)):
        raise KeyError(f"state does not fit the model: missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]}")


def merge(model):
    """W <- W + (alpha / r) B A in every adapted layer, then plain nn.Linear layers again; the model is a plain GPT
    (or ScalarGPT) whose state dict loads anywhere. Returns the model."""
    for name, m in lora_layers(model):
        parent = model.get_submodule(name.rsplit(".", 1)[0])
        plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        with torch.no_grad():
            m.weight.add_(m.delta_weight())
        plain.weight, plain.bias = m.weight, m.bias
        setattr(parent, name.rsplit(".", 1)[1], plain)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model.requires_grad_(True)


def set_merged(model, merged):
    """Merge (True) or unmerge (False) in place, keeping the adapters: for inference speed; training stays unmerged.
    Unmerging subtracts the same delta, so W comes back up to one rounding per element."""
    for _, m in lora_layers(model):
        if m.merged != merged:
            with torch.no_grad():
                m.weight.add_(m.delta_weight() if merged else -m.delta_weight())
            m.merged = merged
    return model


def frozen_to(model, dtype):
    """Hold the frozen block matrices in `dtype` (bf16 under GPU autocast: 2 B a weight, no fp32 master copy);
    embeddings, LayerNorms, biases and everything trained stay fp32. Autocast would cast these matrices to bf16
    for every matmul anyway, so the numbers are the same; only the fp32 copies go."""
    for _, m in lora_layers(getattr(model, "module", model)):  # layers outside --lora_targets stay fp32
        m.weight.data = m.weight.data.to(dtype)
        if m.bias is not None:
            m.bias.data = m.bias.data.to(dtype)
    return model


def trunk_sha256(model):
    """sha256 over the trunk's (transformer.*) tensors as float32 bytes, in name order: the identity of the base an
    adapter belongs to. The same for a GPT and the ScalarGPT made from it (the reward model from the SFT model),
    for a .pt file and a Hugging Face folder holding the same weights."""
    h = hashlib.sha256()
    model = getattr(model, "module", model)
    for name, t in sorted(model.state_dict().items()):
        if name.startswith("transformer.") and "lora_" not in name:
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy())  # its buffer, not a copy
    return h.hexdigest()


def main(argv=None):
    """python -m minirlhf.lora merge IN.pt OUT.pt: a LoRA checkpoint (adapters + the base it names) -> a plain one."""
    import argparse

    from minirlhf.checkpoint import merge_checkpoint

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("command", choices=["merge"])
    p.add_argument("src")
    p.add_argument("dst")
    a = p.parse_args(argv)
    merge_checkpoint(a.src, a.dst)
    print(f"wrote {a.dst}: {a.src}'s adapters merged into its base")


if __name__ == "__main__":
    main()
