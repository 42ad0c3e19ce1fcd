"""LoRA adapters kept apart from the model they adapt, so one base serves many of them at once.

A LoRA fine-tune (`finetune --method lora`) leaves, beside its merged weights, `adapter.safetensors`:
for each adapted linear layer its two low-rank factors A (r, in) and B (out, r), and the scaling
(alpha / r). A layer then computes base(x) + scaling · (x Aᵀ) Bᵀ, which is what the merged weight
W + scaling · B A computes, without changing W.

Which adapter each batch row runs with is an argument of the forward pass (`Transformer.forward(
adapters=...)`, turned into `RowAdapters` there), never state on the model: two callers can share one
module without either seeing the other's choice. Rows are grouped by adapter, so a batch that mixes
three adapters costs three small extra products per layer, and a batch with none costs nothing.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save as safetensors_bytes

from bigmodel.errors import BigModelError
from bigmodel.model.folders import resolve_checkpoint

ADAPTER = "adapter.safetensors"
TARGETS = ("qkv", "proj", "up", "down", "gate", "q", "kv")  # the linear layers LoRA adapts, by their last name
_serial = itertools.count(1)


@dataclass(eq=False)
class Adapter:
    """One LoRA adapter: per layer its factors (A, B), and the scaling they are applied with.
    `key` tells apart two adapters loaded under one name (cached keys and values must not mix)."""

    name: str
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # by the layer's name in the model
    scaling: float
    base: str = ""  # the checkpoint it was trained on, as the fine-tune named it
    layers: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # the same, by module
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = f"{self.name}#{next(_serial)}"


def adapter_file(factors: dict[str, tuple[torch.Tensor, torch.Tensor]], scaling: float, base: str) -> bytes:
    """`adapter.safetensors`: `NAME.lora_A` and `NAME.lora_B` per layer; scaling and base in the metadata."""
    tensors = {f"{name}.lora_{part}": t.detach().float().cpu().contiguous()
               for name, (a, b) in factors.items() for part, t in (("A", a), ("B", b))}
    return safetensors_bytes(tensors, metadata={"scaling": json.dumps(scaling), "base": base})


def read_adapter(name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str], source: Path,
                 model: nn.Module) -> Adapter:
    """The adapter in `tensors` (from `source`), checked against the layers of `model` it adapts."""
    if "scaling" not in metadata:
        raise BigModelError(f"{source}: no LoRA scaling in its metadata; is it a bigmodel {ADAPTER}?")
    param = next(model.parameters())
    layers = dict(model.named_modules())
    factors = {}
    for key in tensors:
        layer, _, part = key.rpartition(".lora_")
        if part not in ("A", "B"):
            raise BigModelError(f"{source}: tensor {key} is not a LoRA factor (NAME.lora_A or NAME.lora_B)")
        if part == "B":
            continue
        target = layers.get(layer)
        a, b = tensors[key], tensors.get(f"{layer}.lora_B")
        shape = (getattr(target, "out_features", None), getattr(target, "in_features", None))
        if b is None:
            raise BigModelError(f"{source}: {layer}.lora_A has no {layer}.lora_B")
        if a.dim() != 2 or b.dim() != 2 or (b.size(0), a.size(1)) != shape or b.size(1) != a.size(0):
            raise BigModelError(f"{source}: {layer} does not fit this model (adapter {tuple(b.shape)} × "
                                f"{tuple(a.shape)}, layer (out, in) {shape}): was it trained on another base?")
        factors[layer] = (a.to(param.device, param.dtype), b.to(param.device, param.dtype))
    if not factors:
        raise BigModelError(f"{source}: no LoRA factors in it")
    return Adapter(name, factors, float(json.loads(metadata["scaling"])), metadata.get("base", ""),
                   {layers[layer]: pair for layer, pair in factors.items()})


class RowAdapters:
    """The adapters of one forward pass's rows, grouped: each adapter with the rows (an index on the
    activations' device, or None for every row) that run with it."""

    def __init__(self, per_row: Sequence[Adapter | None], device: torch.device) -> None:
        chosen = {a.key: a for a in per_row if a is not None}
        if len(chosen) == 1 and all(per_row):
            self.groups: list[tuple[Adapter, torch.Tensor | None]] = [(per_row[0], None)]
        else:
            self.groups = [(a, torch.tensor([r for r, x in enumerate(per_row) if x is a], device=device))
                           for a in chosen.values()]

    @staticmethod
    def of(per_row: Sequence[Adapter | None] | None, device: torch.device) -> RowAdapters | None:
        """None when no row asks for an adapter: the plain forward pass."""
        return RowAdapters(per_row, device) if per_row and any(per_row) else None

    def linear(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`layer(x)` plus the low-rank update of each row's adapter (rows are x's first dimension)."""
        y = layer(x)
        for adapter, rows in self.groups:
            pair = adapter.layers.get(layer)
            if pair is None:
                continue
            a, b = pair
            if rows is None:  # every row: no gathering
                y = y + (x @ a.T @ b.T) * adapter.scaling
            else:
                y = y.index_add(0, rows, x.index_select(0, rows) @ a.T @ b.T, alpha=adapter.scaling)
        return y


def adapter_folder(path: str | Path) -> Path:
    """The folder holding the adapter a LoRA fine-tune left in `path` (a checkpoint, or a run folder: its best/)."""
    folder = resolve_checkpoint(path)
    if not (folder / ADAPTER).is_file():
        raise BigModelError(f"{folder}: no {ADAPTER}; adapters come from `finetune --method lora` of a causal LM")
    return folder
