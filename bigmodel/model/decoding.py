"""Decoding steps on the CPU: the fast path of the model's linear layers, and the thread policy the
callers that decode (generate, seq2seq, the serving engine) set around a step."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn as nn

FEW_ROWS = 32  # up to this many rows, a decoding step rather than a training batch


def rows_on_cpu(x: torch.Tensor, weight: torch.Tensor, most: int) -> bool:
    """True for at most `most` fp32 rows on the CPU outside autograd: a decoding step."""
    return (x.numel() <= most * x.size(-1) and x.device.type == "cpu" and weight.dtype == torch.float32
            and not torch.is_grad_enabled())


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
    """nn.Linear with fast paths for decoding steps on the CPU, outside autograd.

    Batch-1 decoding is bound by how fast the weights stream from memory. PyTorch's CPU
    build multiplies one row through a matrix-vector kernel that uses one core; numpy's
    OpenBLAS uses them all and streams about twice as fast here, so one row goes that way.
    For a few rows (a serving batch), the CPU build's BLAS computes W @ x.T about twice
    as fast as the x @ W.T of `F.linear`, with the same result.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not rows_on_cpu(x, self.weight, FEW_ROWS):
            return super().forward(x)
        rows = x.detach().reshape(-1, x.size(-1))
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
