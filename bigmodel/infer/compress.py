"""Compression, each step judged by the perplexity it costs.

- bf16 weights: every weight stored and run in bfloat16. Half the bytes, and batch-1 decoding
  is bound by streaming the bytes.
- Magnitude pruning: the smallest-magnitude fraction of each block matrix set to zero with
  `torch.nn.utils.prune`, made permanent, so the checkpoint stays an ordinary one.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import prune

from bigmodel.errors import BigModelError
from bigmodel.model.transformer import Transformer


def block_linears(model: Transformer) -> list[nn.Linear]:
    """The matrices inside the blocks: what pruning touches (embeddings stay exact)."""
    return [m for name, m in model.named_modules() if name.startswith("blocks.") and isinstance(m, nn.Linear)]


def prune_magnitude(model: Transformer, sparsity: float) -> None:
    if not 0 < sparsity < 1:
        raise BigModelError("--sparsity must be between 0 and 1")
    for linear in block_linears(model):
        prune.l1_unstructured(linear, name="weight", amount=sparsity)
        prune.remove(linear, "weight")


def to_bf16(model: Transformer) -> Transformer:
    return model.to(torch.bfloat16)
