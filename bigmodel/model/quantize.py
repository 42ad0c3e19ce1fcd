"""Dynamic int8 linear layers, and how they are stored in safetensors.

Every matrix becomes int8 with one scale per output channel (symmetric, -127..127); activations are
quantized at run time, one scale per row (token). Batch-1 decoding streams a quarter of the fp32 bytes
through torch's int8 kernel (fbgemm on x86); embeddings and norms stay exact. The tied output layer gets
its own int8 copy.

Why per row: the kernel quantizes its whole input with one scale, and in Llama-family models a few tokens
carry activations hundreds of times larger than the rest (SmolLM2-135M: up to ~2,800 into the down
projections of layers 11 and 28). One scale per batch zeroes every other token of the window
(perplexity 93 instead of 34.5 on 8,000 held-out characters of Shakespeare); dividing each row by its own
peak before the kernel and multiplying back after gives every token its own scale (35.6, one measurement;
`bench/smollm2.py` measures the rule as shipped).

A checkpoint stores each matrix as its int8 values, scales and zero points, and the safetensors metadata
says `quantization: int8`.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from bigmodel.errors import BigModelError
from bigmodel.model.transformer import Transformer

METADATA = {"quantization": "int8"}
SMALLEST_SCALE = 1e-8  # of an all-zero weight row or activation row, so nothing divides by zero


def packed(values: torch.Tensor, scales: torch.Tensor) -> torch.ScriptObject:
    """The int8 kernel's own layout of a matrix (bias added outside: it must not be scaled per row)."""
    zero_points = torch.zeros(len(scales), dtype=torch.long)
    with warnings.catch_warnings():  # torch announces a move of quantized tensors to torchao
        warnings.simplefilter("ignore")
        weight = torch._make_per_channel_quantized_tensor(values, scales.double(), zero_points, 0)
    return torch.ops.quantized.linear_prepack(weight, None)


class Int8Linear(nn.Module):
    """y = x Wᵀ + b with W in int8, one scale per output channel, and x quantized per row at run time."""

    def __init__(self, values: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = values.shape
        self.register_buffer("values", values)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.packed = packed(values, scales)

    @classmethod
    def of(cls, linear: nn.Linear) -> Int8Linear:
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127).clamp_min(SMALLEST_SCALE)
        values = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(values, scales, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == x.size(-1):  # one row: the kernel's one scale is already this row's own
            y = torch.ops.quantized.linear_dynamic(x, self.packed, True)
        else:
            peak = x.abs().amax(dim=-1, keepdim=True).clamp_min(SMALLEST_SCALE)
            y = torch.ops.quantized.linear_dynamic(x / peak, self.packed, True).mul_(peak)
        return y if self.bias is None else y.add_(self.bias)


def to_int8(model: Transformer) -> Transformer:
    """The model with every linear layer in dynamic int8 (changed in place, also returned)."""
    if next(model.parameters()).device.type != "cpu":
        raise BigModelError("int8 runs on the CPU only (torch's int8 kernels): use --device cpu")
    model = model.float()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear.of(child))
    return model


def is_int8(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())


def int8_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain tensors for safetensors: int8 values, scales and zero points of each matrix, the rest as is."""
    tensors = {name: p.detach().contiguous() for name, p in model.named_parameters()}
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            tensors[f"{name}.weight.int8"] = module.values.contiguous()
            tensors[f"{name}.weight.scale"] = module.scales.contiguous()
            tensors[f"{name}.weight.zero_point"] = torch.zeros(module.out_features, dtype=torch.int32)
    return tensors


def load_int8_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Fill a model made by `to_int8` from `int8_tensors` output; every stored tensor must be used."""
    unused = dict(tensors)
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            values = unused.pop(f"{name}.weight.int8")
            if values.shape != module.values.shape:
                raise KeyError(f"{name}.weight.int8 is {tuple(values.shape)}, not {tuple(module.values.shape)}")
            module.values = values
            module.scales = unused.pop(f"{name}.weight.scale").float()
            if unused.pop(f"{name}.weight.zero_point").any():
                raise KeyError(f"{name}.weight.zero_point: int8 matrices are symmetric, their zero points 0")
            module.packed = packed(module.values, module.scales)
    params = dict(model.named_parameters())
    missing = [name for name in params if name not in unused]
    if missing:
        raise KeyError(f"int8 weights lack {', '.join(missing[:3])}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(unused.pop(name))
    if unused:
        raise KeyError(f"int8 weights hold tensors the model does not: {', '.join(sorted(unused)[:3])}")
