"""Inference on the CPU: the fast paths of the model's linear layers (measured in bench/linear.py)."""

from __future__ import annotations

import torch
import torch.nn as nn

FEW_ROWS = 4  # up to this many rows (decoding steps), the product streams the weight; beyond, it computes
ONEDNN = torch.backends.mkldnn.is_available()


def fp32_inference_on_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu"))


class Linear(nn.Linear):
    """nn.Linear with fast fp32 paths on the CPU, outside autograd, through oneDNN.

    PyTorch's CPU build multiplies through MKL, which does not take its fastest code on AMD CPUs, and
    multiplies one row on one core; oneDNN (also in the build) does neither. A matrix product (a prompt,
    an audio window, a batch) goes through oneDNN on the weight as it is, about twice MKL's speed. A
    decoding step's few rows are bound by streaming the weight from memory, which oneDNN does on every
    core from a copy of the weight in its own layout: made at the first such step, remade when the weight
    changes, never saved or copied. It doubles an fp32 model's memory while it decodes (int8 models,
    4 times faster at decoding, take another path).
    """

    packed: tuple[tuple[int, int], torch.Tensor] | None = None  # (the weight's address and version, its copy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (ONEDNN and fp32_inference_on_cpu(x, self.weight)):
            return super().forward(x)
        rows = x.reshape(-1, x.size(-1))
        weight = self.onednn_weight() if len(rows) <= FEW_ROWS else self.weight
        y = torch.ops.mkldnn._linear_pointwise(rows, weight, self.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], -1)

    def __getstate__(self) -> dict:  # copies (deepcopy, pickle) remake their own: oneDNN's layout cannot be copied
        return {name: value for name, value in super().__getstate__().items() if name != "packed"}

    def onednn_weight(self) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight._version)
        if self.packed is None or self.packed[0] != key:
            self.packed = key, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 1)
        return self.packed[1]
