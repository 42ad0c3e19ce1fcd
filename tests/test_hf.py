"""Hugging Face interop, checked against `transformers` itself."""

import pytest
import torch
import transformers

from bigmodel.config import ModelConfig
from bigmodel.data.tokenizer import train_bpe
from bigmodel.errors import BigModelError
from bigmodel.model.checkpoint import load_checkpoint
from bigmodel.model.hf import gpt2_from_hf, gpt2_to_hf
from bigmodel.model.transformer import Transformer

from .conftest import SHAKESPEARE, run_cli


@pytest.fixture
def hf_gpt2(tmp_path):
    """A random GPT2LMHeadModel saved the way transformers saves, with a tokenizer beside it."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=320, n_positions=48, n_embd=64, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(config).eval()
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    text = SHAKESPEARE.read_text(encoding="utf-8")[:50_000] if SHAKESPEARE.is_file() else "hello world " * 500
    train_bpe([text], vocab_size=320).save(str(folder / "tokenizer.json"))
    return model, folder


@torch.no_grad()
def test_gpt2_import_gives_the_same_logits(hf_gpt2, tmp_path):
    theirs, folder = hf_gpt2
    result = run_cli("convert", "--from-hf", str(folder), "--out", str(tmp_path / "ckpt"))
    assert result.returncode == 0, result.stderr
    ours, tok, _ = load_checkpoint(tmp_path / "ckpt")
    assert ours.config.mlp == "gelu_tanh" and tok.get_vocab_size() <= 320
    idx = torch.randint(320, (3, 40))
    torch.testing.assert_close(ours(idx)[0], theirs(idx).logits, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_gpt2_export_loads_in_transformers_with_the_same_logits(hf_gpt2, tmp_path):
    _, folder = hf_gpt2
    ours = gpt2_from_hf(folder)
    gpt2_to_hf(ours, tmp_path / "exported")
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "exported").eval()
    idx = torch.randint(320, (2, 48))
    torch.testing.assert_close(reloaded(idx).logits, ours(idx)[0], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_our_trained_checkpoint_exports_through_the_cli(trained_run, tmp_path):
    result = run_cli("export", "--ckpt", str(trained_run), "--to-hf", str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    ours, tok, _ = load_checkpoint(trained_run)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.tensor([tok.encode("ROMEO: what say you?").ids])
    torch.testing.assert_close(theirs(idx).logits, ours(idx)[0], atol=1e-4, rtol=1e-4)


def test_unsupported_models_are_refused_with_a_reason(tmp_path):
    with pytest.raises(BigModelError, match="positions=learned"):
        rope = ModelConfig(vocab_size=10, n_layer=1, n_head=2, n_embd=8, block_size=8, positions="rope")
        gpt2_to_hf(Transformer(rope), tmp_path / "x")
    for name, config, message in [("t5", '{"model_type": "t5"}', "model_type 't5' is not supported yet"),
                                  ("bert", '{"model_type": "bert"}', "lack 'intermediate_size'")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(config)
        result = run_cli("convert", "--from-hf", str(tmp_path / name), "--out", str(tmp_path / "o"))
        assert result.returncode == 1 and message in result.stderr, result.stderr


@torch.no_grad()
def test_encoder_decoder_exports_as_bart_with_the_same_logits(tmp_path):
    from bigmodel.model.formats import to_hf

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=300, block_size=40, n_layer=2, encoder_layers=3, n_head=4, n_embd=64,
                         norm_first=False, embed_norm=True)
    ours = Transformer(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a misplaced one shows
        for p in ours.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    assert to_hf(ours, tmp_path / "bart") == "BartForConditionalGeneration"
    theirs = transformers.BartForConditionalGeneration.from_pretrained(tmp_path / "bart").eval()
    source = torch.randint(300, (2, 30))
    mask = torch.ones_like(source)
    mask[1, 20:] = 0
    target = torch.randint(300, (2, 12))
    expected = theirs(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits
    torch.testing.assert_close(ours(target, source=source, source_mask=mask.bool())[0], expected,
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(BigModelError, match="norm_first=False"):
        to_hf(Transformer(ModelConfig(vocab_size=10, n_layer=1, encoder_layers=1, n_head=2, n_embd=8,
                                      block_size=8, embed_norm=True)), tmp_path / "x")
