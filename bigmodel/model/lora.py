"""LoRA adapters kept apart from the model they adapt, so one base serves many of them at once.

A LoRA fine-tune (`finetune --method lora`) leaves, beside its merged weights, `adapter.safetensors`:
for each adapted linear layer its two low-rank factors A (r, in) and B (out, r), and the scaling
(alpha / r). A layer then computes base(x) + scaling · (x Aᵀ) Bᵀ, which is what the merged weight
W + scaling · B A computes, without changing W.

`attach` wraps the model's adaptable layers once; `AdapterRows.use` then says, for one forward
pass, which adapter each batch row runs with (None: the base alone). Rows are grouped by adapter,
so a batch that mixes three adapters costs three small extra products per layer, and a batch with
none costs nothing but the check.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save as safetensors_bytes

from bigmodel.errors import BigModelError
from bigmodel.model.checkpoint import Storage
from bigmodel.model.folders import resolve_checkpoint

ADAPTER = "adapter.safetensors"
TARGETS = ("qkv", "proj", "up", "down", "gate", "q", "kv")  # the linear layers LoRA adapts, by their last name
_serial = itertools.count(1)


@dataclass(eq=False)
class Adapter:
    """One LoRA adapter: per layer name its factors (A, B), and the scaling they are applied with.
    `key` tells apart two adapters loaded under one name (cached keys and values must not mix)."""

    name: str
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scaling: float
    base: str = ""  # the checkpoint it was trained on, as the fine-tune named it
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
    return Adapter(name, factors, float(json.loads(metadata["scaling"])), metadata.get("base", ""))


class AdapterRows:
    """Which adapter each row of the next forward passes runs with, as groups of rows (set by `use`)."""

    def __init__(self) -> None:
        self.groups: list[tuple[Adapter, slice | torch.Tensor]] = []

    @contextlib.contextmanager
    def use(self, per_row: Sequence[Adapter | None]) -> Iterator[None]:
        adapters = {a.key: a for a in per_row if a is not None}
        if len(adapters) == 1 and all(per_row):
            self.groups = [(per_row[0], slice(None))]  # every row the same adapter: no gathering
        else:
            self.groups = [(a, torch.tensor([r for r, x in enumerate(per_row) if x is a])) for a in adapters.values()]
        try:
            yield
        finally:
            self.groups = []


class AdaptedLinear(nn.Module):
    """A linear layer (plain, or int8) plus the low-rank update of each row's adapter."""

    def __init__(self, base: nn.Module, name: str, rows: AdapterRows) -> None:
        super().__init__()
        self.base, self.name, self.rows = base, name, rows
        self.in_features, self.out_features = base.in_features, base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for adapter, rows in self.rows.groups:
            pair = adapter.factors.get(self.name)
            if pair is None:
                continue
            a, b = pair
            if isinstance(rows, slice):  # every row: no gathering
                y.add_(x @ a.T @ b.T, alpha=adapter.scaling)
            else:
                y.index_add_(0, rows, x.index_select(0, rows) @ a.T @ b.T, alpha=adapter.scaling)
        return y


def attach(model: nn.Module) -> AdapterRows:
    """Wrap every adaptable linear layer of `model` (in place); the switch that picks adapters per row."""
    rows = AdapterRows()
    for prefix, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if name in TARGETS and not isinstance(child, AdaptedLinear) and hasattr(child, "in_features"):
                setattr(module, name, AdaptedLinear(child, f"{prefix}.{name}" if prefix else name, rows))
    return rows


def load_adapter(name: str, path: str | Path, model: nn.Module, storage: Storage) -> Adapter:
    """The adapter a LoRA fine-tune left in `path` (a checkpoint, or a run folder: its best/), for `model`."""
    folder = resolve_checkpoint(path)
    if not (folder / ADAPTER).is_file():
        raise BigModelError(f"{folder}: no {ADAPTER}; adapters come from `finetune --method lora` of a causal LM")
    return read_adapter(name, *storage.tensors(folder, ADAPTER), folder / ADAPTER, model)
