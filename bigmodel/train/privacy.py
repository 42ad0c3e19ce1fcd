"""Differentially private training with Opacus: DP-SGD with per-example clipping, Gaussian noise
calibrated by Opacus' accountant to reach (ε, δ) at the planned number of steps, and Poisson sampling.

Opacus computes per-example gradients for the layer types it knows (`nn.Linear`, `nn.Embedding`,
`nn.LayerNorm`, `nn.RMSNorm`); our `Linear` is an `nn.Linear` with fast inference paths, so it
takes the same per-example rule. Tied input/output embeddings are one parameter used twice, which
per-example hooks cannot split: fine-tuning keeps the embeddings frozen under DP (LoRA freezes them
anyway), pretraining needs an untied model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch.utils.data import DataLoader, TensorDataset

from bigmodel.config import PrivacyConfig
from bigmodel.errors import BigModelError
from bigmodel.model.checkpoint import Storage, read_sections, resolve_checkpoint
from bigmodel.model.decoding import Linear
from bigmodel.model.heads import SequenceModel
from bigmodel.train.optim import optimizer_step

CHUNK = 32  # examples per forward pass inside a DP-SGD batch (Opacus' "physical batch")
Chunk = TypeVar("Chunk", bound=Sequence)


@dataclass
class Privacy:
    """The accountant's view of a private run."""

    engine: object  # opacus.PrivacyEngine
    delta: float
    max_grad_norm: float
    noise_multiplier: float

    def epsilon(self) -> float:
        """ε spent so far, at `delta`."""
        return float(self.engine.get_epsilon(self.delta))

    def record(self) -> dict[str, float]:
        """What a checkpoint states about its privacy."""
        return {"epsilon": self.epsilon(), "delta": self.delta, "max_grad_norm": self.max_grad_norm,
                "noise_multiplier": self.noise_multiplier}


def check(dp: PrivacyConfig, examples: int, batch_size: int, refusals: dict[str, bool]) -> None:
    """Refuse, in one line, what DP-SGD here cannot do; `refusals` maps a setting to whether it is on."""
    if dp.dp_epsilon <= 0:
        raise BigModelError(f"--dp-epsilon must be positive, not {dp.dp_epsilon}")
    if not 0 < dp.dp_delta < 1:
        raise BigModelError(f"--dp-delta must be between 0 and 1, not {dp.dp_delta}")
    if dp.dp_max_grad_norm <= 0:
        raise BigModelError(f"--dp-max-grad-norm must be positive, not {dp.dp_max_grad_norm}")
    if batch_size > examples:
        raise BigModelError(f"--batch-size {batch_size} exceeds the {examples} training examples: DP-SGD draws "
                            "each example with probability batch/examples, which must be at most 1")
    for what, refused in refusals.items():
        if refused:
            raise BigModelError(f"--dp-epsilon does not support {what}")


def freeze_embeddings(model: SequenceModel) -> None:
    """Embeddings (tied to the output layer) stay as pretrained: see the module's docstring."""
    backbone = model.backbone
    for name in ("tok_emb", "pos_emb", "type_emb"):
        module = getattr(backbone, name, None)
        if module is not None:
            module.weight.requires_grad = False


def make_private(runner: torch.nn.Module, optimizer: torch.optim.Optimizer, examples: int, batch_size: int,
                 steps: int, dp: PrivacyConfig
                 ) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader, Privacy]:
    """Opacus' module (per-example gradients), optimizer (clip + noise) and Poisson loader of example indices.

    The loader draws each example with probability 1 / ceil(examples / batch_size) and one pass is
    that many batches; the noise is calibrated for `steps` of them."""
    try:
        from opacus import PrivacyEngine
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.grad_sample import GradSampleModule
        from opacus.grad_sample.linear import compute_linear_grad_sample
    except ImportError:
        raise BigModelError("--dp-epsilon needs Opacus: pip install 'bigmodel[privacy]'") from None
    GradSampleModule.GRAD_SAMPLERS.setdefault(Linear, compute_linear_grad_sample)
    # Opacus' backward hooks fire on the first trainable layer although its input (frozen embeddings)
    # needs no gradient; torch warns about that at every step.
    warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
    # the noise comes from torch's generator, as Opacus does by default (docs: Differential privacy says so)
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    indices = DataLoader(TensorDataset(torch.arange(examples)), batch_size=batch_size)
    noise = get_noise_multiplier(target_epsilon=dp.dp_epsilon, target_delta=dp.dp_delta,
                                 sample_rate=1 / len(indices), steps=steps, accountant="rdp")
    engine = PrivacyEngine(accountant="rdp")
    module, optimizer, loader = engine.make_private(
        module=runner, optimizer=optimizer, data_loader=indices, noise_multiplier=noise,
        max_grad_norm=dp.dp_max_grad_norm, poisson_sampling=True)
    return module, optimizer, loader, Privacy(engine, dp.dp_delta, dp.dp_max_grad_norm, noise)


def private_step(optimizer: torch.optim.Optimizer, lr: float, batch: Sequence[Chunk],
                 mean_loss: Callable[[Chunk], torch.Tensor]) -> float:
    """One DP-SGD step over a batch given as chunks; returns the summed loss.

    Each chunk's per-example gradients (of `mean_loss`, its mean over the chunk) are clipped and
    added up, and the noise comes once, with the last chunk: the chunks only bound memory and
    padding, the privacy guarantee sees one batch."""
    summed = 0.0
    for j, chunk in enumerate(batch):
        loss = mean_loss(chunk)
        loss.backward()
        summed += loss.item() * len(chunk)
        if j < len(batch) - 1:
            optimizer.signal_skip_step(do_skip=True)  # clip and keep; no noise, no update yet
        optimizer_step(optimizer, lr, 0.0)  # the per-example clipping replaces the global one
    return summed


def chunks(items: Sequence[Chunk]) -> list[Chunk]:
    """`items` cut into pieces of at most CHUNK."""
    return [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]


def summary(run: Path, storage: Storage) -> str:
    """The closing line of a private run: the (ε, δ) its last checkpoint states it spent, and how."""
    record = read_sections(resolve_checkpoint(run, prefer="last"), storage)["privacy"]
    return (f"differential privacy: (ε = {record['epsilon']:.3f}, δ = {record['delta']:g}) spent over the run "
            f"(noise multiplier {record['noise_multiplier']:.3f}, per-example clipping at {record['max_grad_norm']:g})")

