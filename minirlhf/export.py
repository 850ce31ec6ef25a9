"""Export a GPT checkpoint of ours (SFT, PPO, DPO, RLOO/GRPO policy) to a Hugging Face transformers GPT-2 folder.

    python -m minirlhf.export --ckpt out/ppo/ckpt.pt --out_dir out/hf_ppo       # --overwrite to replace an export

The way back from `GPT.from_pretrained`, which reads such folders (and round-trips this one exactly). Anywhere
with transformers installed, without minirlhf:

    from transformers import AutoTokenizer, GPT2LMHeadModel
    model, tok = GPT2LMHeadModel.from_pretrained("out/hf_ppo"), AutoTokenizer.from_pretrained("out/hf_ppo")

The folder:
- config.json: GPT2LMHeadModel with our n_layer, n_head, n_embd, n_positions (= block_size), vocab_size;
  activation gelu_new (our MLP's tanh GELU), layer-norm eps 1e-5 (model.LayerNorm's, as nn.LayerNorm's), tied embeddings, dropout
  as trained, end-of-text as bos/eos and our pad token as pad_token_id.
- model.safetensors: the weights under GPT-2's names (transformer.h.N.attn.c_attn.weight, ...). GPT-2 stores
  its four matmul weights as Conv1D, (in, out): those are transposed (model.HF_CONV1D_WEIGHTS, the same list
  from_pretrained reads with). lm_head is tied to wte and not stored twice. The checkpoint's dtype is kept.
- generation_config.json: eos, pad, and every id that is not a real token suppressed (our generate never
  samples pad either).
- The tokenizer, for transformers' GPT2Tokenizer: vocab.json and merges.txt converted from our tiktoken ranks
  (for GPT-2 they come out identical to GPT-2's own files; the test checks it), tokenizer_config.json and
  special_tokens_map.json with <|endoftext|> and <|pad|> as special tokens, split_special_tokens on (a
  literal "<|endoftext|>" in text is plain text, as in minirlhf.tokenizer) and left padding (as our rollouts).
- README.md: where the folder came from and how to tokenise.

transformers' generate derives position ids from the attention mask, as our model does; a plain forward call
over a left-padded batch needs position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0) to give our logits.

The vocabulary: our GPT-2 tokenizer has GPT-2's 50257 ids + our pad = 50258, and a model's embedding may have
more rows than its tokenizer has ids (a vocab_size rounded up, say). Every row is exported, so the logits match
ours column for column and the round trip is exact; ids at and past pad are never produced by the tokenizer,
and generation_config.json suppresses them so transformers' generate never samples them either.

The lab's tokenizer (minirlhf/lab/tokenizer.tiktoken, about a thousand ids) and any custom .tiktoken
vocabulary are not GPT-2's, but they are byte-level BPE with GPT-2's pre-tokenisation, so the same conversion
gives transformers tokenizer files that tokenise exactly as ours (checked on the lab's strings in the test).
The ranks file itself is copied too, as tokenizer.tiktoken (the reference: minirlhf.tokenizer.get_tokenizer(
"<folder>/tokenizer.tiktoken") or tiktoken read it), and README.md says so. A vocabulary whose tokens cannot
all be split into two earlier ones (not produced by BPE merges) gets only the ranks file and the note.

Reward and value checkpoints (ScalarGPT) are refused, with a message: transformers' nearest class,
GPT2ForSequenceClassification, has no bias in its score head and reads the score at the last non-pad token
it finds by itself, so it would not compute our scores. Load them with minirlhf.checkpoint.load_model.
"""

import argparse
import json
import os

from minirlhf.checkpoint import CheckpointError, load_checkpoint, load_model
from minirlhf.files import atomic_write
from minirlhf.model import HF_CONV1D_WEIGHTS
from minirlhf.tokenizer import byte_chars, parse_ranks

EOT, PAD = "<|endoftext|>", "<|pad|>"
# Files transformers reads in preference to ours if a folder holds them: --overwrite removes them with ours.
SHADOWING = ("tokenizer.json", "added_tokens.json", "pytorch_model.bin", "model.safetensors.index.json")


def hf_config(model, tok):
    """config.json for transformers' GPT2LMHeadModel."""
    c = model.config
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer,
        "n_head": c.n_head, "n_inner": None,  # None = 4 * n_embd, as our MLP
        "activation_function": "gelu_new",  # nn.GELU(approximate="tanh")
        "layer_norm_epsilon": model.transformer.ln_f.eps,
        "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
        "initializer_range": 0.02, "scale_attn_weights": True, "tie_word_embeddings": True,
        "bos_token_id": tok.eot_token, "eos_token_id": tok.eot_token, "pad_token_id": tok.pad_token,
        "torch_dtype": str(model.lm_head.weight.dtype).removeprefix("torch."),
    }


def hf_state_dict(model):
    """Our GPT's weights under GPT-2's names, Conv1D weights transposed, lm_head left to the tie."""
    return {key: (w.t() if key.endswith(HF_CONV1D_WEIGHTS) else w).contiguous()
            for key, w in model.state_dict().items() if key != "lm_head.weight"}


def bpe_merges(ranks):
    """tiktoken ranks -> the merges list of Hugging Face's BPE, as (left bytes, right bytes) in rank order.

    tiktoken merges, in a piece, the adjacent pair whose concatenation has the lowest rank; HF merges the pair
    that comes first in its merges list. Listing, for each multi-byte token in rank order, the two tokens that
    tiktoken's own merging (limited to lower ranks) builds it from makes the two agree. None if some token
    cannot be built from two lower-ranked ones (a vocabulary not made by BPE merges).
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:  # merge the lowest-ranked adjacent pair, as tiktoken does, below this rank
            pair_ranks = [ranks.get(a + b, rank) for a, b in zip(parts, parts[1:])]
            i = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
            if pair_ranks[i] >= rank:
                return None
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2 or parts[0] not in ranks or parts[1] not in ranks:
            return None
        merges.append((parts[0], parts[1]))
    return merges


def hf_tokenizer_files(tok, model_max_length):
    """{file name: text} for transformers' GPT2Tokenizer, or {} where the vocabulary has no merges list."""
    ranks = parse_ranks(tok.ranks_text.splitlines(), tok.name)  # {token bytes: id}
    merges = bpe_merges(ranks)
    if merges is None:
        return {}
    chars = byte_chars()

    def word(token):
        return "".join(chars[b] for b in token)
    vocab = {word(token): i for token, i in ranks.items()}
    vocab[EOT] = tok.eot_token  # as GPT-2's vocab.json; pad is an added token only (tokenizer_config.json)
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": PAD}

    def added(content):
        return {"content": content, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False,
                "special": True}
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": model_max_length, "add_prefix_space": False,
              "padding_side": "left", "split_special_tokens": True, "clean_up_tokenization_spaces": False,
              **special, "added_tokens_decoder": {str(tok.eot_token): added(EOT), str(tok.pad_token): added(PAD)}}
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{word(a)} {word(b)}\n" for a, b in merges),
        "tokenizer_config.json": json.dumps(config, indent=2),
        "special_tokens_map.json": json.dumps(special, indent=2),
    }


def readme(ckpt_path, ckpt, tok, model, has_hf_tokenizer):
    extra = model.config.vocab_size - tok.vocab_size
    unused = f", as are the {extra} unused embedding rows after it" if extra else ""
    lines = [f"# {os.path.basename(os.path.dirname(os.path.abspath(ckpt_path))) or 'model'}: a minirlhf "
             f"{ckpt['stage']} model as a transformers GPT-2 folder", "",
             f"Exported by `python -m minirlhf.export` from `{ckpt_path}` (stage {ckpt['stage']}, step "
             f"{ckpt.get('step')}), {model.num_params() / 1e6:.2f}M parameters, tokenizer `{tok.name}` "
             f"(vocabulary sha256 {tok.sha256[:12]}...).", "",
             "    from transformers import AutoTokenizer, GPT2LMHeadModel",
             "    model = GPT2LMHeadModel.from_pretrained(FOLDER); tok = AutoTokenizer.from_pretrained(FOLDER)", "",
             f"Ids: <|endoftext|> {tok.eot_token} (ends every response), <|pad|> {tok.pad_token} (padding only, "
             f"never generated: suppressed in generation_config.json{unused}). Text is plain text: a literal "
             "<|endoftext|> in it is not the special token. Left-padded batches: transformers' generate derives "
             "position ids from the attention mask; a plain forward call needs "
             "position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0), as our model uses."]
    if tok.name != "gpt2":
        lines += ["", "## Tokeniser", "",
                  f"Not GPT-2's: `{tok.name}`, {tok.vocab_size} ids, byte-level BPE with GPT-2's pre-tokenisation. "
                  "`tokenizer.tiktoken` here is the vocabulary itself (tiktoken's format, one `base64(token) rank` "
                  "line per token, the pattern is GPT-2's). Tokenise with",
                  "", "    from minirlhf.tokenizer import get_tokenizer",
                  "    tok = get_tokenizer(FOLDER + '/tokenizer.tiktoken'); ids = tok.encode(text)", "",
                  "or tiktoken itself (`tiktoken.Encoding` with the ranks of that file, GPT-2's `pat_str`, and "
                  f"special tokens <|endoftext|> = {tok.eot_token}, <|pad|> = {tok.pad_token})."]
        lines += [("The transformers tokenizer files beside it (vocab.json, merges.txt) are converted from it and "
                   "tokenise the same way.") if has_hf_tokenizer else
                  "This vocabulary was not built by BPE merges, so there are no transformers tokenizer files."]
    return "\n".join(lines) + "\n"


def export(ckpt_path, out_dir, overwrite=False):
    """Write the folder; returns the names of the files written."""
    ckpt = load_checkpoint(ckpt_path)
    if ckpt["model_type"] != "gpt":
        raise CheckpointError(
            f"{ckpt_path}: a {ckpt['model_type']!r} checkpoint (stage {ckpt['stage']!r}, a reward or value model): "
            "only language models (SFT/PPO/DPO policies) export to GPT-2 folders. transformers' "
            "GPT2ForSequenceClassification has no bias in its score head, so it would not give our scores; load "
            "this one with minirlhf.checkpoint.load_model(path, expect='scalar')")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir}: exists and is not empty; pass --overwrite to replace an earlier export")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"{out_dir}: exists and is not a folder")
    model, tok, ckpt = load_model(ckpt_path, expect="gpt")
    if not model.config.bias:
        raise ValueError(f"{ckpt_path}: model_args.bias is False, but GPT-2 has biases everywhere")
    tok_files = hf_tokenizer_files(tok, model.config.block_size)
    texts = {
        "config.json": json.dumps(hf_config(model, tok), indent=2),
        "generation_config.json": json.dumps({
            "bos_token_id": tok.eot_token, "eos_token_id": tok.eot_token, "pad_token_id": tok.pad_token,
            "suppress_tokens": list(range(tok.pad_token, model.config.vocab_size))}, indent=2),
        **tok_files,
        "README.md": readme(ckpt_path, ckpt, tok, model, bool(tok_files)),
    }
    if tok.name != "gpt2":
        texts["tokenizer.tiktoken"] = tok.ranks_text
    os.makedirs(out_dir, exist_ok=True)
    for name in SHADOWING + tuple(texts) + ("model.safetensors",):
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))  # only with --overwrite (checked above): a stale file goes
    from safetensors.torch import save
    metadata = {"format": "pt", "minirlhf_stage": str(ckpt["stage"]), "minirlhf_tokenizer": tok.name}
    weights = save(hf_state_dict(model), metadata=metadata)  # transformers wants format "pt" in the metadata
    atomic_write(os.path.join(out_dir, "model.safetensors"), lambda f: f.write(weights))
    for name, text in texts.items():
        atomic_write(os.path.join(out_dir, name), lambda f, text=text: f.write(text.encode()))
    return ["model.safetensors", *texts]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minirlhf.export", description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="a GPT checkpoint of ours (SFT, PPO, DPO, ...), e.g. out/ppo/ckpt.pt")
    p.add_argument("--out_dir", required=True, help="the folder to write (new, or empty, or with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace the export files in an existing folder")
    args = p.parse_args(argv)
    try:
        written = export(args.ckpt, args.out_dir, args.overwrite)
    except (CheckpointError, OSError, ValueError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    print(f"wrote {args.out_dir}: {', '.join(written)}")


if __name__ == "__main__":
    main()
