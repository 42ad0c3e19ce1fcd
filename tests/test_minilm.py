"""The real pretrained subject: all-MiniLM-L6-v2 (BERT, 22M parameters) from its pip package."""

import json

import numpy as np
import pytest
import torch
import transformers

from bigmodel.model.checkpoint import load_checkpoint
from bigmodel.model.formats import find_pretrained

from .conftest import run_cli

SENTENCES = ["A man is playing a guitar on the stage.", "今天天气很好，我们去公园散步吧。",
             "Pizza night 🍕🎉 with friends!", "ok"]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm")
    result = run_cli("convert", "--from-hf", "minilm", "--out", str(out))
    assert result.returncode == 0, result.stderr
    ours, tok, _ = load_checkpoint(out)
    theirs = transformers.BertModel.from_pretrained(find_pretrained("minilm"), add_pooling_layer=False).eval()
    return out, ours, tok, theirs


def _long_sentence(tok) -> str:
    words = "the quick brown fox jumps over the lazy dog while 东京 and emoji 🙂 watch".split()
    text = ""
    i = 0
    while len(tok.encode(text).ids) < 256:
        text += words[i % len(words)] + " "
        i += 1
    while len(tok.encode(text).ids) > 256:
        text = text.rsplit(" ", 2)[0] + " "
    return text


@torch.no_grad()
def test_hidden_states_match_transformers(minilm):
    _, ours, tok, theirs = minilm
    tok.no_truncation()
    tok.no_padding()
    texts = [*SENTENCES, _long_sentence(tok)]
    assert len(tok.encode(texts[-1]).ids) == 256
    for text in texts:
        enc = tok.encode(text)
        ids, types = torch.tensor([enc.ids]), torch.tensor([enc.type_ids])
        expected = theirs(input_ids=ids, token_type_ids=types).last_hidden_state
        got = ours.hidden_states(ids, token_types=types)
        assert (got - expected).abs().max().item() <= 1e-4, text


@torch.no_grad()
def test_padded_batches_match_transformers_on_real_tokens(minilm):
    _, ours, tok, theirs = minilm
    tok.enable_padding(pad_id=0)
    encodings = tok.encode_batch(SENTENCES)
    tok.no_padding()
    ids = torch.tensor([e.ids for e in encodings])
    mask = torch.tensor([e.attention_mask for e in encodings])
    expected = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
    got = ours.hidden_states(ids, padding_mask=mask.bool())
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= 1e-4


@torch.no_grad()
def test_embed_matches_sentence_transformers_mean_pooling(minilm, tmp_path):
    ckpt, _, tok, theirs = minilm
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    result = run_cli("embed", "--ckpt", str(ckpt), "--input", str(lines), "--out", str(tmp_path / "v.npy"))
    assert result.returncode == 0, result.stderr
    ours = np.load(tmp_path / "v.npy")
    for text, vector in zip(SENTENCES, ours, strict=True):
        enc = tok.encode(text)
        hidden = theirs(input_ids=torch.tensor([enc.ids])).last_hidden_state[0]
        reference = torch.nn.functional.normalize(hidden.mean(0), dim=0).numpy()
        assert float(vector @ reference) >= 0.9999
    assert abs(np.linalg.norm(ours, axis=1) - 1).max() < 1e-5


def test_a_folder_with_only_vocab_txt_tokenizes_like_tokenizer_json(tmp_path):
    import shutil

    from bigmodel.model.hf import read_hf_tokenizer

    source = find_pretrained("minilm")
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(source / name, tmp_path / name)
    wordpiece, reference = read_hf_tokenizer(tmp_path), read_hf_tokenizer(source)
    reference.no_padding()  # the shipped tokenizer.json pads every text to 128
    for text in SENTENCES:
        assert wordpiece.encode(text).ids == reference.encode(text).ids


@torch.no_grad()
def test_export_round_trips_through_transformers(minilm, tmp_path):
    ckpt, ours, tok, _ = minilm
    result = run_cli("export", "--ckpt", str(ckpt), "--to-hf", str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    reloaded = transformers.BertModel.from_pretrained(tmp_path / "hf", add_pooling_layer=False).eval()
    tok.no_padding()
    ids = torch.tensor([tok.encode(SENTENCES[1]).ids])
    assert (reloaded(input_ids=ids).last_hidden_state - ours.hidden_states(ids)).abs().max().item() <= 1e-4


def test_the_shipped_tokenizer_settings_never_reach_a_checkpoint(minilm, tmp_path):
    """MiniLM's tokenizer.json pads and truncates to 128; converted, it must do neither."""
    out, _, tok, _ = minilm
    stored = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert stored["padding"] is None and stored["truncation"] is None
    long_text = "word " * 300
    assert len(tok.encode(long_text).ids) == 302  # [CLS] + 300 + [SEP], not cut at 128


def test_every_ckpt_flag_takes_a_hugging_face_folder_or_short_name(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("A man plays guitar.\n今天天气很好。\n", encoding="utf-8")
    for ckpt in ("minilm", str(find_pretrained("minilm"))):
        result = run_cli("embed", "--ckpt", ckpt, "--input", str(lines), "--out", str(tmp_path / "v.npy"))
        assert result.returncode == 0, result.stderr
        vectors = np.load(tmp_path / "v.npy")
        assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
