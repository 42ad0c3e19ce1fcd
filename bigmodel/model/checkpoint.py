"""Checkpoint folders: written whole under a temporary name, then swapped in by rename.

A folder holds `model.safetensors` (weights), `model.json` (ModelConfig), `config.yaml`
(the resolved run config), `tokenizer.json` and, for resumable ones, `trainer_state.pt`
(optimizer, iteration, RNG and sampler state; tensors and plain values only, so it loads
with `weights_only=True`). A run folder holds `best/` and `last/`. Wherever a checkpoint is
read, a Hugging Face folder (or a packaged short name such as `minilm`) is imported instead.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from tokenizers import Tokenizer

from bigmodel.config import ModelConfig, save_yaml
from bigmodel.data.tokenizer import load_tokenizer, plain_tokenizer
from bigmodel.errors import BigModelError
from bigmodel.model.heads import HEAD_FILE, HeadConfig, SequenceModel
from bigmodel.model.hf import find_hf_folder, from_hf, read_hf_tokenizer
from bigmodel.model.quantize import METADATA as INT8_METADATA
from bigmodel.model.quantize import int8_tensors, is_int8, load_int8_tensors, to_int8
from bigmodel.model.transformer import Transformer

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model.json"
TRAINER_STATE = "trainer_state.pt"


def save_checkpoint(path: Path, model: Transformer | SequenceModel, tokenizer: Tokenizer,
                    sections: dict[str, Any], trainer_state: dict[str, Any] | None = None) -> None:
    """Write the folder as `path.tmp`, then replace `path` with it (old one kept until then).

    A `SequenceModel` also leaves `head.json` (task, labels, pooling)."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if is_int8(model):
        save_file(int8_tensors(model), str(tmp / WEIGHTS), metadata=INT8_METADATA)
    else:
        save_model(model, str(tmp / WEIGHTS))
    (tmp / MODEL_CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2))
    save_yaml(tmp / "config.yaml", sections)
    plain_tokenizer(tokenizer).save(str(tmp / "tokenizer.json"))  # never pads or truncates when reloaded
    if isinstance(model, SequenceModel):
        model.head_config.save(tmp)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER_STATE)
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """A checkpoint folder itself, or a run folder's `best/` (then `last/`).

    A folder left as `X.old` by a kill between the two renames counts as `X`.
    """
    p = Path(path)
    if (p / WEIGHTS).is_file() and (p / MODEL_CONFIG).is_file():
        return p
    order = [prefer, "last" if prefer == "best" else "best"]
    for name in order:
        for candidate in (p / name, p / f"{name}.old"):
            if (candidate / WEIGHTS).is_file():
                return candidate
    if not p.exists():
        raise BigModelError(f"{path}: no such checkpoint folder")
    raise BigModelError(f"{path}: not a checkpoint ({WEIGHTS} and {MODEL_CONFIG}) nor a run folder with best/ or last/")


def locate(path: str | Path) -> tuple[Path, bool]:
    """The folder `--ckpt` names and whether it is a Hugging Face one (imported, not loaded)."""
    try:
        return resolve_checkpoint(path), False
    except BigModelError as not_ours:
        if not (Path(path) / "config.json").is_file() and Path(path).exists():
            raise
        try:
            return find_hf_folder(path), True
        except BigModelError:
            raise not_ours from None


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", with_head: bool = False,
                    ) -> tuple[Any, Tokenizer, Path]:
    """The model (eval mode, on `device`) and tokenizer of a checkpoint, run or Hugging Face folder,
    and the folder used.

    `with_head` asks for the fine-tuned `SequenceModel` (the folder must hold `head.json`);
    otherwise the plain `Transformer`, even from a fine-tuned folder (its head dropped).
    """
    folder, is_hf = locate(path)
    if is_hf:
        if with_head:
            raise BigModelError(f"{path}: a Hugging Face backbone has no fine-tuned head; run `bigmodel finetune`")
        return from_hf(folder).to(device).eval(), read_hf_tokenizer(folder), folder
    config = ModelConfig.from_dict(json.loads((folder / MODEL_CONFIG).read_text()))
    has_head = (folder / HEAD_FILE).is_file()
    if with_head and not has_head:
        raise BigModelError(f"{folder}: not a fine-tuned checkpoint (no {HEAD_FILE}); run `bigmodel finetune`")
    model: Any = Transformer(config)
    if has_head:
        model = SequenceModel(model, HeadConfig.load(folder))
    with safe_open(str(folder / WEIGHTS), "pt") as stored:  # a bf16 checkpoint stays bf16, an int8 one int8
        dtype = stored.get_tensor(next(iter(stored.keys()))).dtype
        int8 = (stored.metadata() or {}).get("quantization") == INT8_METADATA["quantization"]
    if dtype.is_floating_point and not int8:
        model = model.to(dtype)
    try:
        if int8:
            if has_head:
                raise BigModelError(f"{folder}: int8 checkpoints of fine-tuned heads are not supported")
            if torch.device(device).type != "cpu":
                raise BigModelError(f"{folder}: int8 checkpoints run on the CPU only (--device cpu)")
            model = to_int8(model)
            load_int8_tensors(model, load_file(str(folder / WEIGHTS)))
        else:
            load_model(model, str(folder / WEIGHTS), strict=True, device=str(device))
    except (RuntimeError, OSError, KeyError) as e:
        raise BigModelError(f"{folder / WEIGHTS}: does not fit {MODEL_CONFIG} ({str(e).splitlines()[0]})") from None
    if has_head and not with_head:
        model = model.backbone
    return model.to(device).eval(), load_tokenizer(folder), folder


def load_trainer_state(folder: Path) -> dict[str, Any]:
    path = folder / TRAINER_STATE
    if not path.is_file():
        raise BigModelError(f"{folder}: no {TRAINER_STATE}; this checkpoint cannot be resumed")
    return torch.load(path, map_location="cpu", weights_only=True)
