"""Checkpoint folders: written whole under a temporary name, then swapped in by rename.

A folder holds `model.safetensors` (weights), `model.json` (ModelConfig), `config.yaml`
(the resolved run config), `tokenizer.json`, `head.json` for fine-tuned models and, for
resumable ones, `trainer_state.pt` (optimizer, iteration, RNG and sampler state; tensors and
plain values only, so it loads with `weights_only=True`). `manifest.json` lists each file's
SHA-256, checked on load. With a key (`Storage`), every file but the manifest is sealed with
AES-GCM (`sealed.py`) and only ever decrypted in memory. A run folder holds `best/` and
`last/`. Wherever a checkpoint is read, a Hugging Face folder (or a packaged short name such
as `minilm`) is imported instead.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load as safetensors_from_bytes
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from tokenizers import Tokenizer

from bigmodel import disk
from bigmodel.config import ModelConfig, StorageConfig, yaml_text
from bigmodel.data.tokenizer import plain_tokenizer, tokenizer_from_json
from bigmodel.errors import BigModelError
from bigmodel.model.folders import (
    MANIFEST,
    MODEL_CONFIG,
    RUN_CONFIG,
    SHARDS,
    TOKENIZER,
    TRAINER_STATE,
    WEIGHTS,
    resolve_checkpoint,
)
from bigmodel.model.formats import find_pretrained, from_pretrained
from bigmodel.model.formats import read_tokenizer as read_pretrained_tokenizer
from bigmodel.model.gguf import is_gguf
from bigmodel.model.heads import HEAD_FILE, HeadConfig, SequenceModel
from bigmodel.model.probe import inference_precision
from bigmodel.model.quantize import METADATA as INT8_METADATA
from bigmodel.model.quantize import int8_tensors, is_int8, load_int8_tensors, to_int8
from bigmodel.model.registry import fetch
from bigmodel.model.sealed import Key, Plaintext, digest, is_sealed, unseal
from bigmodel.model.sealed import seal as seal_bytes
from bigmodel.model.transformer import Transformer
from bigmodel.model.whisper import is_openai_checkpoint

RESUMED = "the model this run builds (resume with the settings it was started with)"


@dataclass(frozen=True)
class Storage:
    """How checkpoint files reach the disk and come back: sealed under `key` (or plain), and
    checked against the folder's manifest on the way in (unless `verify` is off)."""

    key: Key | None = None
    verify: bool = True

    @classmethod
    def of(cls, cfg: StorageConfig) -> Storage:
        return cls(Key.from_env(cfg.encrypt_key_env) if cfg.encrypt_key_env else None, cfg.verify)

    def write(self, folder: Path, name: str, data: bytes | bytearray) -> str:
        """Write `data` as `folder/name`, sealed if there is a key; its SHA-256."""
        sha256 = hashlib.sha256(data).hexdigest()
        (folder / name).write_bytes(seal_bytes(data, name, self.key, sha256) if self.key else data)
        return sha256

    def read(self, folder: Path, name: str) -> bytes:
        """The (decrypted, checked) contents of `folder/name`."""
        path = folder / name
        if is_sealed(path):
            with self._unseal(folder, name) as plain:
                return bytes(plain.data)
        data = path.read_bytes()
        if self.verify:
            self._check(folder, name, hashlib.sha256(data).hexdigest())
        return data

    def text(self, folder: Path, name: str) -> str:
        return self.read(folder, name).decode("utf-8")

    def tensors(self, folder: Path, name: str = WEIGHTS) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The tensors of a safetensors file and its metadata; plain files are memory-mapped."""
        path = folder / name
        if is_sealed(path):
            with self._unseal(folder, name) as plain:
                if plain.path is None:  # no anonymous memory files here: parse from bytes
                    data = bytes(plain.data)
                    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])  # the safetensors layout
                    return safetensors_from_bytes(data), header.get("__metadata__") or {}
                return self._safetensors(plain.path)
        if self.verify:
            self._check(folder, name, digest(path))
        return self._safetensors(str(path))

    @staticmethod
    def _safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        with safe_open(path, "pt") as stored:
            metadata = stored.metadata() or {}
        return load_file(path), metadata

    def _unseal(self, folder: Path, name: str) -> Plaintext:
        plain = unseal(folder / name, self.key)
        try:
            self._check(folder, name, plain.header["sha256"])
        except BigModelError:
            plain.close()
            raise
        return plain

    def _check(self, folder: Path, name: str, sha256: str) -> None:
        if not self.verify:
            return
        if not (folder / MANIFEST).is_file():  # checkpoints from before manifests load, but not in silence
            say_unchecked(folder)
            return
        expected = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["sha256"].get(name)
        if expected != sha256:
            raise BigModelError(f"{folder / name}: SHA-256 {sha256[:16]}… differs from {MANIFEST}'s "
                                f"{str(expected)[:16]}…: the file is damaged or was replaced "
                                "(--no-verify loads it anyway)")


@functools.cache
def say_unchecked(folder: Path) -> None:
    """Once per folder: its files cannot be checked against a manifest."""
    print(f"note: {folder} has no {MANIFEST}, so its files load unchecked (damage or replacement would go unseen)",
          file=sys.stderr, flush=True)


PLAIN = Storage()


def weights_bytes(model: Transformer | SequenceModel) -> bytes:
    """The model's tensors as a safetensors file; a tensor shared by two names (tied embeddings) is stored once."""
    if is_int8(model):
        return safetensors_bytes(int8_tensors(model), metadata=INT8_METADATA)
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            tensors[name] = tensor.contiguous()
    return safetensors_bytes(tensors)


def load_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str | Path,
              expected: str) -> tuple[list[str], list[str]]:
    """`load_state_dict(strict=False)`, with a shape that differs said in one line; the missing and
    unexpected names."""
    try:
        return model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e))
        raise BigModelError(f"{source}: does not fit {expected} ({detail})") from None


def assign_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str | Path,
                   expected: str = MODEL_CONFIG) -> None:
    """Copy `tensors` (read from `source`) into `model`; a name may be missing only when it shares its
    tensor with a stored one. Names or shapes that differ are one line saying `source` does not fit
    `expected` (what the model was built from)."""
    missing, unexpected = load_into(model, tensors, source, expected)
    state = model.state_dict()
    stored = {state[name].data_ptr() for name in tensors if name in state}
    missing = [name for name in missing if state[name].data_ptr() not in stored]
    if missing or unexpected:
        raise BigModelError(f"{source}: does not fit {expected} (missing {missing[:3]}, unexpected {unexpected[:3]})")


def save_checkpoint(path: Path, model: Transformer | SequenceModel, tokenizer: Tokenizer | None,
                    sections: dict[str, Any], trainer_state: dict[str, Any] | None = None,
                    storage: Storage = PLAIN, shards: Path | None = None, plain: dict[str, str] | None = None,
                    files: dict[str, bytes] | None = None) -> None:
    """Write the folder as `path.tmp`, then replace `path` with it (old one kept until then).

    A `SequenceModel` also leaves `head.json` (task, labels, pooling). Image and audio models have
    no tokenizer (a speech recognizer's characters are its head's labels). `shards`, a folder of
    FSDP shards already written, moves in as `shards/` before the rename, so it lands with the rest.
    `plain` files (the chat template and special tokens, by name) are written as they are, never sealed;
    other `files` (a LoRA run's adapter) like the weights."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {WEIGHTS: weights_bytes(model), MODEL_CONFIG: json.dumps(model.config.to_dict(), indent=2).encode(),
             RUN_CONFIG: yaml_text(sections).encode(), **(files or {})}
    if tokenizer is not None:
        files[TOKENIZER] = plain_tokenizer(tokenizer).to_str().encode()  # never pads or truncates when reloaded
    if isinstance(model, SequenceModel):
        files[HEAD_FILE] = model.head_config.to_json().encode()
    if trainer_state is not None:
        buffer = io.BytesIO()
        torch.save(trainer_state, buffer)
        files[TRAINER_STATE] = buffer.getvalue()
    sha256 = {name: storage.write(tmp, name, data) for name, data in files.items()}
    (tmp / MANIFEST).write_text(json.dumps({"sealed": storage.key is not None, "sha256": sha256}, indent=2))
    for name, text in (plain or {}).items():
        (tmp / name).write_text(text, encoding="utf-8")
    if shards is not None:
        os.replace(shards, tmp / SHARDS)
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    disk.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def locate(path: str | Path) -> tuple[Path, bool]:
    """The folder `--ckpt` names and whether it is a Hugging Face one (imported, not loaded).
    `models:/NAME/VERSION` and `models:/NAME@ALIAS` come from the MLflow registry (`registry.py`)."""
    if str(path).startswith("models:/"):
        return fetch(str(path)), False
    try:
        return resolve_checkpoint(path), False
    except BigModelError as not_ours:
        if Path(path).exists() and not ((Path(path) / "config.json").is_file() or is_gguf(path)
                                       or is_openai_checkpoint(Path(path))):
            raise
        try:
            return find_pretrained(path), True
        except BigModelError:
            raise not_ours from None


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", with_head: bool = False,
                    storage: Storage = PLAIN) -> tuple[Any, Tokenizer, Path]:
    """The model (eval mode, on `device`) and tokenizer of a checkpoint, run or Hugging Face folder,
    and the folder used.

    `with_head` asks for the fine-tuned `SequenceModel` (the folder must hold `head.json`);
    otherwise the plain `Transformer`, even from a fine-tuned folder (its head dropped).
    """
    folder, is_hf = locate(path)
    if is_hf:
        if with_head:
            raise BigModelError(f"{path}: a Hugging Face backbone has no fine-tuned head; run `bigmodel finetune`")
        return from_pretrained(folder).to(device).eval(), read_pretrained_tokenizer(folder), folder
    config = ModelConfig.from_dict(json.loads(storage.text(folder, MODEL_CONFIG)))
    has_head = (folder / HEAD_FILE).is_file()
    if with_head and not has_head:
        raise BigModelError(f"{folder}: not a fine-tuned checkpoint (no {HEAD_FILE}); run `bigmodel finetune`")
    model: Any = Transformer.empty(config)  # every parameter comes from the checkpoint
    if has_head:
        model = SequenceModel(model, HeadConfig.from_json(storage.text(folder, HEAD_FILE)))
    tensors, metadata = storage.tensors(folder)
    int8 = metadata.get("quantization") == INT8_METADATA["quantization"]
    dtype = next(iter(tensors.values())).dtype  # a bf16 checkpoint stays bf16, an int8 one int8
    if dtype.is_floating_point and not int8:
        model = model.to(dtype)
    try:
        if int8:
            if has_head:
                raise BigModelError(f"{folder}: int8 checkpoints of fine-tuned heads are not supported")
            if torch.device(device).type != "cpu":
                raise BigModelError(f"{folder}: int8 checkpoints run on the CPU only (--device cpu)")
            model = to_int8(model)
            load_int8_tensors(model, tensors)
        else:
            assign_weights(model, tensors, folder / WEIGHTS)
    except (RuntimeError, KeyError) as e:
        raise BigModelError(f"{folder / WEIGHTS}: does not fit {MODEL_CONFIG} ({str(e).splitlines()[0]})") from None
    if has_head and not with_head:
        model = model.backbone
    return model.to(device).eval(), read_tokenizer(folder, storage), folder


def load_backbone(init: str, device: torch.device, storage: Storage) -> tuple[Transformer, Tokenizer, Path]:
    """A bigmodel checkpoint, or a Hugging Face folder, GGUF file or packaged short name imported; and where."""
    model, tok, folder = load_checkpoint(init, device, storage=storage)
    if is_int8(model):
        raise BigModelError(f"{init}: an int8 checkpoint cannot be trained; start from the one it came from")
    return model.float(), tok, folder


def in_precision(model: Any, requested: str, device: torch.device, decoding: bool = False) -> Any:
    """An fp32 model cast to the number format `--dtype` picks for this device (said on stderr), as
    `transformers`' `torch_dtype` and vLLM's `--dtype` do; bf16 and int8 checkpoints keep theirs.
    `decoding` probes one decoding step (one row, one token), else batches of whole windows."""
    if is_int8(model) or next(model.parameters()).dtype != torch.float32:
        return model
    precision = inference_precision(requested, torch.device(device), model.config, decoding)
    print(f"dtype {requested} -> {precision.line()}", file=sys.stderr, flush=True)
    return model.to(precision.dtype)


def read_tokenizer(folder: Path, storage: Storage = PLAIN) -> Tokenizer | None:
    if not (folder / TOKENIZER).is_file():
        return None
    return tokenizer_from_json(storage.text(folder, TOKENIZER), folder / TOKENIZER)


def read_sections(folder: Path, storage: Storage = PLAIN) -> dict[str, Any]:
    """The run config a checkpoint was saved with."""
    return yaml.safe_load(storage.text(folder, RUN_CONFIG)) or {}


def load_trainer_state(folder: Path, storage: Storage = PLAIN) -> dict[str, Any]:
    if not (folder / TRAINER_STATE).is_file():
        raise BigModelError(f"{folder}: no {TRAINER_STATE}; this checkpoint cannot be resumed")
    return torch.load(io.BytesIO(storage.read(folder, TRAINER_STATE)), map_location="cpu", weights_only=True)
