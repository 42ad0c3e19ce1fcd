"""Dynamic int8 linear layers (torch.ao), and how they are stored in safetensors.

Every matrix becomes int8 with one scale per output channel; activations are quantized per
batch at run time. Batch-1 decoding streams a quarter of the fp32 bytes, so it runs about
twice as fast; embeddings and norms stay exact. The tied output layer gets its own int8 copy.

SwiGLU MLPs (the Llama family's) stay in fp32: the activations entering them carry a few
channels hundreds of times larger than the rest, which one int8 scale per token cannot hold
(SmolLM2-135M, one measurement on 8,000 characters of Shakespeare: perplexity 26.1 in fp32, 93 with
its MLPs in int8, 27.9 with them kept; `bench/smollm2.py` measures the rule as shipped).

`torch.ao` swaps only exact `nn.Linear` modules, so our `Linear` (a subclass that carries the
one-row fp32 path) is turned into a plain one first. A quantized model's `state_dict` holds
packed C++ objects, so checkpoints store each matrix as its int8 values, scales and zero
points instead, and the safetensors metadata says `quantization: int8`.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
from torch.ao.nn.quantized.dynamic import Linear as Int8Linear
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from bigmodel.errors import BigModelError
from bigmodel.model.transformer import Transformer

METADATA = {"quantization": "int8"}


def to_int8(model: Transformer) -> Transformer:
    """The model with every linear layer in dynamic int8 (changed in place, also returned)."""
    if next(model.parameters()).device.type != "cpu":
        raise BigModelError("int8 (torch.ao dynamic quantization) runs on the CPU only: use --device cpu")
    model = model.float()
    kept = ".mlp." if model.config.mlp == "swiglu" else None  # stays fp32 (see the module's docstring)
    for prefix, module in list(model.named_modules()):
        for name, child in module.named_children():
            if kept and kept in f".{prefix}.{name}.":
                continue  # our Linear still: one decoding row goes through OpenBLAS (see `decoding_threads`)
            if isinstance(child, nn.Linear) and type(child) is not nn.Linear:
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                plain.weight = nn.Parameter(child.weight.detach().clone())  # clone: unties the output layer
                if child.bias is not None:
                    plain.bias = nn.Parameter(child.bias.detach().clone())
                setattr(module, name, plain)
    with warnings.catch_warnings():  # torch.ao eager quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


def is_int8(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())


def int8_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain tensors for safetensors: int8 values, scales and zero points of each matrix, the rest as is."""
    tensors = {name: p.detach().contiguous() for name, p in model.named_parameters()}
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            weight, bias = module.weight(), module.bias()
            tensors[f"{name}.weight.int8"] = weight.int_repr().contiguous()
            tensors[f"{name}.weight.scale"] = weight.q_per_channel_scales().float().contiguous()
            tensors[f"{name}.weight.zero_point"] = weight.q_per_channel_zero_points().int().contiguous()
            if bias is not None:
                tensors[f"{name}.bias"] = bias.detach().contiguous()
    return tensors


def load_int8_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Fill a model made by `to_int8` from `int8_tensors` output; every stored tensor must be used."""
    unused = dict(tensors)
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            values = unused.pop(f"{name}.weight.int8")
            scales = unused.pop(f"{name}.weight.scale").double()
            zeros = unused.pop(f"{name}.weight.zero_point").long()
            weight = torch._make_per_channel_quantized_tensor(values, scales, zeros, 0)
            module.set_weight_bias(weight, unused.pop(f"{name}.bias", None))
    params = dict(model.named_parameters())
    missing = [name for name in params if name not in unused]
    if missing:
        raise KeyError(f"int8 weights lack {', '.join(missing[:3])}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(unused.pop(name))
    if unused:
        raise KeyError(f"int8 weights hold tensors the model does not: {', '.join(sorted(unused)[:3])}")
