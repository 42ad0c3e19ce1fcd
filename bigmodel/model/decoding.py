"""Inference on the CPU: the fast paths of the model's linear layers, and the thread policy the callers
that decode (generate, seq2seq, the serving engine) set around a step."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn as nn

FEW_ROWS = 4  # up to this many rows, W @ x.T; beyond, oneDNN
# oneDNN builds a kernel for each new shape (about 1.5 ms): smaller products, which would not win it back, stay
SMALL_PRODUCT = 2**27  # multiply-adds
ONEDNN = torch.backends.mkldnn.is_available()


def fp32_inference_on_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu"))


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Leave the cores to OpenBLAS: spinning torch threads would fight it for them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Linear(nn.Linear):
    """nn.Linear with fast fp32 paths on the CPU, outside autograd (measured in bench/linear.py).

    Batch-1 decoding is bound by how fast the weights stream from memory. PyTorch's CPU
    build multiplies one row through a matrix-vector kernel that uses one core; numpy's
    OpenBLAS uses them all and streams about twice as fast here, so one row goes that way.
    For a few rows (a serving batch), the CPU build's BLAS computes W @ x.T faster than
    the x @ W.T of `F.linear`. Large products (a long prompt, an audio window, a batch) go
    through oneDNN's matmul on the weight as it is: twice the speed of the CPU build's MKL on
    the AMD EPYC machines this was measured on (MKL does not take its fastest code there).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not fp32_inference_on_cpu(x, self.weight):
            return super().forward(x)
        rows = x.detach().reshape(-1, x.size(-1))
        if len(rows) > FEW_ROWS:
            if not ONEDNN or len(rows) * self.weight.numel() < SMALL_PRODUCT:
                return super().forward(x)
            y = torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, "none", [], "")
            return y.view(*x.shape[:-1], -1)
        if len(rows) == 1:
            y = torch.from_numpy(np.dot(rows.numpy(), self.weight.detach().numpy().T))
        else:
            y = (self.weight @ rows.T).T.contiguous()
        if self.bias is not None:
            y += self.bias
        return y.view(*x.shape[:-1], -1)


def uses_blas(model: nn.Module) -> bool:
    """Whether one decoding row goes through any of our own Linear layers' OpenBLAS path: all of an fp32
    model's on the CPU, none of an int8 model's."""
    return any(isinstance(m, Linear) and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32
               for m in model.modules())


def decoding_threads(blas: bool, rows: int) -> contextlib.AbstractContextManager[None]:
    """The threads a decoding step of `rows` new tokens should run on: when one row goes through OpenBLAS
    (`uses_blas`), it wants the cores to itself, and torch's int8 kernels run on one thread beside it rather
    than fight it."""
    if blas and rows == 1 and not torch.is_grad_enabled():
        return one_torch_thread()
    return contextlib.nullcontext()
