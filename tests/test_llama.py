"""Llama-family models in and out: SmolLM2's GGUF file against transformers' own GGUF loader, tiny random
Llama, Mistral, Qwen2 and Qwen3 folders made by transformers' config classes, and the way back out."""

import json
import subprocess
import sys
import time

import jsonschema
import numpy as np
import pytest
import torch
import transformers

from bigmodel.config import GenerateConfig
from bigmodel.errors import BigModelError
from bigmodel.infer.generate import generate_ids
from bigmodel.model.checkpoint import load_checkpoint
from bigmodel.model.formats import find_pretrained, from_pretrained, read_tokenizer, to_hf
from bigmodel.model.transformer import Transformer

from .conftest import SHAKESPEARE, error_line, metric_rows, run_cli

TEXTS = ["What is the capital of France? Answer in one word.",
         "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a\n",
         "大型语言模型的训练需要大量数据。", "Emoji 🤗🚀 and   spaces\tand tabs",
         "<|im_start|>user\nHello!<|im_end|>\n", "In 2024, 12345 tokens cost $3.50"]


@pytest.fixture(scope="module")
def smollm2():
    """Ours and transformers' SmolLM2-135M-Instruct, both from the packaged Q4_1 GGUF file, dequantized to fp32."""
    path = find_pretrained("smollm2")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    their_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ours, tok, _ = load_checkpoint(path)  # the file by its path (`--ckpt smollm2` finds the same)
    return ours, tok, theirs, their_tok


def test_smollm2_from_gguf_gives_transformers_logits_and_greedy_tokens(smollm2):
    ours, tok, theirs, their_tok = smollm2
    assert ours.config.n_layer == 30 and ours.config.n_kv_head == 3 and ours.config.tie_embeddings
    for text in TEXTS:
        ids = tok.encode(text).ids
        assert ids == their_tok(text, add_special_tokens=False)["input_ids"], text
        with torch.no_grad():
            mine = ours(torch.tensor([ids]))[0]
            reference = theirs(torch.tensor([ids])).logits
        assert (mine - reference).abs().max().item() <= 1e-3, text
    text = their_tok.apply_chat_template([{"role": "user", "content": TEXTS[0]}], add_generation_prompt=True,
                                         tokenize=False)
    prompt = tok.encode(text).ids
    expected = theirs.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
    end = tok.token_to_id("<|im_end|>")  # the template's end of turn, transformers' eos for this file
    got = [int(t[0]) for t in generate_ids(ours, prompt, GenerateConfig(temperature=0, max_new_tokens=12), 1, {end})]
    assert got == expected
    assert "Paris" in tok.decode(got)


def test_the_gguf_tokenizer_splits_digits_as_smollm2_does():
    tok = read_tokenizer(find_pretrained("smollm2"))
    pieces = tok.encode("In 2024, 12345 tokens").tokens
    assert [p for p in pieces if p.isdigit()] == list("202412345")  # the file holds no digit-digit merge
    assert tok.decode(tok.encode("Tschüß, 世界 👋").ids) == "Tschüß, 世界 👋"


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "phi3"])
def test_a_tiny_hugging_face_model_of_each_family_imports_and_exports_to_the_same_logits(family, tmp_path):
    kinds = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
             "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": None}),
             "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
             "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {"head_dim": 16}),
             "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM, {"pad_token_id": 0, "eos_token_id": 1,
                                                                              "bos_token_id": 1})}
    config_class, model_class, extra = kinds[family]
    config = config_class(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                          rope_theta=50000.0, rms_norm_eps=1e-6, tie_word_embeddings=family == "qwen2", **extra)
    torch.manual_seed(0)
    reference = model_class(config).eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if "norm" in name or name.endswith("bias"):  # random, so a wrong mapping of either would show
                p.add_(0.2 * torch.randn_like(p))
    reference.save_pretrained(tmp_path / "hf")
    ours = from_pretrained(tmp_path / "hf")
    assert (ours.config.qkv_bias, ours.config.qk_norm) == (family == "qwen2", family == "qwen3")
    ids = torch.randint(0, 320, (2, 24))
    with torch.no_grad():
        expected = reference(ids).logits
        assert (ours(ids)[0] - expected).abs().max().item() < 1e-4
    to_hf(ours, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert (back(ids).logits - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("scaling", [{"rope_type": "linear", "factor": 4.0},
                                     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}])
def test_rope_scaling_imports_and_exports_to_the_same_logits(scaling, tmp_path):
    """Over 600 positions, where the scaled frequencies have turned far enough to change the logits."""
    import dataclasses

    from bigmodel.data.tokenizer import train_bpe
    from bigmodel.model.gguf import GGUFFile, write_gguf

    config = transformers.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384,
                                      rope_theta=50000.0, rope_scaling=scaling)
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).eval()
    reference.save_pretrained(tmp_path / "hf")
    ours = from_pretrained(tmp_path / "hf")
    assert (ours.config.rope_scaling, ours.config.rope_factor) == (scaling["rope_type"], scaling["factor"])
    ids = torch.randint(0, 320, (1, 600))
    with torch.no_grad():
        expected = reference(ids).logits
        matched = (ours(ids)[0] - expected).abs().max().item()
        unscaled = Transformer(dataclasses.replace(ours.config, rope_scaling="none"))
        unscaled.load_state_dict(ours.state_dict())
        missed = (unscaled.eval()(ids)[0] - expected).abs().max().item()
        assert matched < 1e-5 and missed > 1e-4 and missed > 30 * matched  # the scaling is what matched
        to_hf(ours, tmp_path / "out")
        back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
        assert (back(ids).logits - expected).abs().max().item() < 1e-4
        # GGUF: linear as metadata, llama3 as llama.cpp's rope_freqs tensor; read back to the same logits
        write_gguf(ours, train_bpe(TEXTS * 20, 300), {}, tmp_path / "scaled.gguf", "f32")
        from_gguf = GGUFFile(tmp_path / "scaled.gguf").model()
        assert (from_gguf.config.rope_scaling, from_gguf.config.rope_factor) == (ours.config.rope_scaling,
                                                                                 ours.config.rope_factor)
        assert (from_gguf(ids)[0] - expected).abs().max().item() < 1e-4


def test_bad_pretrained_files_are_one_line(tmp_path):
    source = find_pretrained("smollm2")
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(source.read_bytes()[:5_000_000])
    with pytest.raises(BigModelError, match="cut.gguf"):
        from_pretrained(truncated)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    done = run_cli("convert", "--from-hf", str(tmp_path / "odd"), "--out", str(tmp_path / "x"))
    assert done.returncode == 1 and "model_type 'mamba' is not supported" in done.stderr.strip().splitlines()[-1]
    from gguf import GGUFWriter

    writer = GGUFWriter(str(tmp_path / "other.gguf"), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    done = run_cli("generate", "--ckpt", str(tmp_path / "other.gguf"), "--prompt", "hi")
    assert done.returncode == 1 and "GGUF architecture 'mamba' is not supported" in done.stderr.splitlines()[-1]


def test_chat_needs_a_template_and_says_so_in_one_line(trained_run):
    line = error_line(run_cli("chat", "--ckpt", str(trained_run)))
    assert "has no chat template; give one with --chat-template FILE" in line


def test_chat_streams_replies_keeps_the_conversation_and_ends_each_at_the_end_of_turn(smollm2):
    _, _, theirs, their_tok = smollm2
    turns = ["What is the capital of France? Answer in one word.", "And of Germany?"]
    done = subprocess.run([sys.executable, "-m", "bigmodel.cli", "chat", "--ckpt", "smollm2", "--greedy",
                           "--max-new-tokens", "40"], input="\n".join(turns) + "\n", capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    replies = done.stdout.splitlines()
    assert len(replies) == 2 and "Paris" in replies[0], done.stdout
    # the second reply is what transformers answers to the whole conversation, rendered by the same template
    messages = [{"role": "user", "content": turns[0]}, {"role": "assistant", "content": replies[0]},
                {"role": "user", "content": turns[1]}]
    prompt = their_tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)["input_ids"]
    out = theirs.generate(prompt, max_new_tokens=40, do_sample=False)[0, prompt.size(1):]
    assert out[-1] == their_tok.convert_tokens_to_ids("<|im_end|>")  # it ended its turn within the budget
    assert replies[1] == their_tok.decode(out, skip_special_tokens=True).strip()


def test_export_to_gguf_reads_back_to_the_same_logits_in_ours_and_transformers(tmp_path):
    from gguf import GGUFReader

    from bigmodel.data.tokenizer import train_bpe
    from bigmodel.model.gguf import GGUFFile

    config = transformers.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      rope_theta=50000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    reference.save_pretrained(tmp_path / "hf")
    tok = train_bpe(TEXTS * 20, 300)  # fewer tokens than the model's 320 rows: GGUF pads the list
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert run_cli("convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")).returncode == 0
    ids = torch.randint(0, 320, (2, 24))
    with torch.no_grad():
        expected = reference(ids).logits
    errors = {}
    for kind in ("f32", "f16", "q8_0"):
        path = tmp_path / f"tiny-{kind}.gguf"
        done = run_cli("export", "--ckpt", str(tmp_path / "ckpt"), "--to-gguf", str(path), "--type", kind)
        assert done.returncode == 0, done.stderr
        back = GGUFFile(path)
        assert back.tokenizer().encode(TEXTS[1]).ids == tok.encode(TEXTS[1]).ids
        assert back.tokenizer_config()["chat_template"] == "{{ messages }}"
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name,
                                                                   dtype=torch.float32).eval()
        with torch.no_grad():
            mine = back.model()(ids)[0]
            assert (mine - theirs(ids).logits).abs().max().item() < 1e-4  # both readers agree on the file
        errors[kind] = (mine - expected).abs().max().item()
        types = {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}
        assert types["blk.0.ffn_down.weight"] == kind.upper() and types["blk.0.attn_norm.weight"] == "F32"
    assert errors["f32"] < 1e-4 and errors["f16"] < errors["q8_0"] < 0.02 * expected.abs().max().item(), errors


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """SmolLM2 converted once into a bigmodel checkpoint (fp32 safetensors, tokenizer, chat template)."""
    out = tmp_path_factory.mktemp("smollm2") / "ckpt"
    done = run_cli("convert", "--from-hf", "smollm2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "<|im_start|>" in json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
    return out


def test_evaluate_quantize_explain_and_embed_run_on_smollm2(converted, tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text(SHAKESPEARE.read_text(encoding="utf-8")[-2000:], encoding="utf-8")
    done = run_cli("evaluate", "--ckpt", str(converted), "--data", str(text), "--json", str(tmp_path / "ppl.json"),
                   "--dtype", "fp32")
    assert done.returncode == 0, done.stderr
    fp32 = json.loads((tmp_path / "ppl.json").read_text())["perplexity"]
    assert 5 < fp32 < 80  # a real English model on Shakespeare; a broken import gives thousands
    done = run_cli("quantize", "--ckpt", str(converted), "--out", str(tmp_path / "int8"), "--method", "int8",
                   "--text", str(text))
    assert done.returncode == 0, done.stderr
    change = float(done.stdout.split("(")[-1].split("%")[0])
    # every matrix int8, activations one scale per token: ~15%; one scale per batch gave ~170%
    assert change < 25, done.stdout
    assert (tmp_path / "int8" / "tokenizer_config.json").is_file()  # the chat template goes along
    done = run_cli("explain", "--ckpt", str(converted), "--text", "The capital of France is", "--steps", "4",
                   "--out", str(tmp_path / "explain"))
    assert done.returncode == 0, done.stderr
    assert "Paris" in (tmp_path / "explain" / "explanation.json").read_text()
    turn = "<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n<|im_start|>assistant\n"
    done = run_cli("generate", "--ckpt", str(converted), "--prompt", turn, "--greedy", "--max-new-tokens", "60",
                   "--dtype", "fp32")
    assert done.returncode == 0, done.stderr
    answer = done.stdout[len(turn):].strip()  # ends at <|im_end|>, the model's eos: no next turn is made up
    assert "Paris" in answer and "user" not in answer and len(answer) < 80, answer
    (tmp_path / "lines.txt").write_text("A man plays a guitar.\nSomeone is playing music.\n")
    done = run_cli("embed", "--ckpt", str(converted), "--input", str(tmp_path / "lines.txt"), "--out",
                   str(tmp_path / "v.npy"))
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "v.npy").shape == (2, 576)


def test_lora_fine_tunes_smollm2_and_the_chat_template_stays(converted, tmp_path):
    pairs = [{"source": w, "target": w.upper()} for w in ["cat", "dog", "sun", "tree", "book", "milk", "road", "fish"]]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs * 2))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs[:4]))
    done = run_cli("finetune", "--init", str(converted), "--task", "seq2seq", "--method", "lora", "--train",
                   str(tmp_path / "train.jsonl"), "--val", str(tmp_path / "val.jsonl"), "--source-column", "source",
                   "--target-column", "target", "--epochs", "3", "--eval-every", "2", "--lr", "3e-3",
                   "--batch-size", "8", "--max-length", "16", "--dtype", "fp32", "--label-smoothing", "0",
                   "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    rows = metric_rows(tmp_path / "run")
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5, rows
    assert (tmp_path / "run" / "best" / "tokenizer_config.json").is_file()


def test_serve_chats_with_smollm2_through_its_template_and_ends_the_turn(converted):
    from fastapi.testclient import TestClient

    from bigmodel.config import ServeConfig
    from bigmodel.serve.app import create_app

    with TestClient(create_app(ServeConfig(ckpt=str(converted)))) as c:
        for _ in range(600):
            if c.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        body = {"messages": [{"role": "user", "content": TEXTS[0]}], "max_tokens": 40, "temperature": 0}
        answer = c.post("/v1/chat/completions", json=body).json()
        schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                   "population": {"type": "integer", "minimum": 0, "maximum": 10**8}},
                  "required": ["city", "population"], "additionalProperties": False}
        body = {"messages": [{"role": "user", "content": "The largest city of France, as JSON."}], "max_tokens": 60,
                "temperature": 0, "response_format": {"type": "json_schema", "json_schema": {"name": "city",
                                                                                            "schema": schema}}}
        structured = c.post("/v1/chat/completions", json=body).json()
    choice = answer["choices"][0]
    assert "Paris" in choice["message"]["content"] and choice["finish_reason"] == "stop", answer
    assert answer["usage"]["completion_tokens"] < 40
    assert structured["choices"][0]["finish_reason"] == "stop", structured
    value = json.loads(structured["choices"][0]["message"]["content"])  # a model never trained for this schema
    jsonschema.validate(value, schema)
    assert structured["choices"][0]["finish_reason"] == "stop"


def test_smollm2_sealed_and_registered_answers_by_its_models_uri(converted, tmp_path, monkeypatch):
    import base64

    from bigmodel.model.checkpoint import Storage, save_checkpoint
    from bigmodel.model.formats import tokenizer_files
    from bigmodel.model.sealed import MAGIC, Key

    monkeypatch.setenv("SMOLLM2_KEY", base64.b64encode(bytes(range(32))).decode())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    model, tok, _ = load_checkpoint(converted)
    sealed = tmp_path / "sealed"
    save_checkpoint(sealed, model, tok, {"note": "SmolLM2, sealed"}, storage=Storage(Key.from_env("SMOLLM2_KEY")),
                    plain=tokenizer_files(converted))
    assert (sealed / "model.safetensors").read_bytes()[:len(MAGIC)] == MAGIC
    done = run_cli("registry", "register", "--ckpt", str(sealed), "--name", "smollm2", "--alias", "production")
    assert done.returncode == 0 and "models:/smollm2@production" in done.stdout, done.stderr[-2000:]
    ask = ["generate", "--ckpt", "models:/smollm2@production", "--prompt", "The capital of France is", "--greedy",
           "--max-new-tokens", "8"]
    assert "sealed (AES-GCM)" in error_line(run_cli(*ask))
    done = run_cli(*ask, "--encrypt-key-env", "SMOLLM2_KEY")
    assert done.returncode == 0 and "Paris" in done.stdout, done.stderr
