"""Differentially private fine-tuning with Opacus: DP-SGD with per-sample clipping, Gaussian noise
calibrated by Opacus' accountant to reach (ε, δ) at the planned number of steps, and Poisson sampling.

Opacus computes per-sample gradients for the layer types it knows (`nn.Linear`, `nn.Embedding`,
`nn.LayerNorm`, `nn.RMSNorm`); our `Linear` is an `nn.Linear` with fast inference paths, so it
takes the same per-sample rule. Tied input/output embeddings are one parameter used twice, which
per-sample hooks cannot split, so the embeddings stay frozen under DP (LoRA freezes them anyway).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, TensorDataset

from bigmodel.config import FinetuneConfig
from bigmodel.errors import BigModelError
from bigmodel.model.heads import SequenceModel
from bigmodel.model.transformer import Linear


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


def check(cfg: FinetuneConfig, examples: int, world_size: int) -> None:
    """Refuse, in one line, what DP-SGD here cannot do."""
    if cfg.dp_epsilon <= 0:
        raise BigModelError(f"--dp-epsilon must be positive, not {cfg.dp_epsilon}")
    if not 0 < cfg.dp_delta < 1:
        raise BigModelError(f"--dp-delta must be between 0 and 1, not {cfg.dp_delta}")
    if cfg.dp_max_grad_norm <= 0:
        raise BigModelError(f"--dp-max-grad-norm must be positive, not {cfg.dp_max_grad_norm}")
    if cfg.batch_size > examples:
        raise BigModelError(f"--batch-size {cfg.batch_size} exceeds the {examples} training examples: DP-SGD draws "
                            "each example with probability batch/examples, which must be at most 1")
    refusals = {"--grad-accum above 1": cfg.grad_accum > 1, "--resume": cfg.resume,
                "several processes (torchrun)": world_size > 1}
    for what, refused in refusals.items():
        if refused:
            raise BigModelError(f"--dp-epsilon does not support {what} yet")


def freeze_embeddings(model: SequenceModel) -> None:
    """Embeddings (tied to the output layer) stay as pretrained: see the module's docstring."""
    backbone = model.backbone
    for module in (backbone.tok_emb, getattr(backbone, "pos_emb", None), getattr(backbone, "type_emb", None)):
        if module is not None:
            module.weight.requires_grad = False


def make_private(runner: torch.nn.Module, optimizer: torch.optim.Optimizer, examples: int, cfg: FinetuneConfig
                 ) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader, Privacy]:
    """Opacus' module (per-sample gradients), optimizer (clip + noise) and Poisson loader of example indices."""
    try:
        from opacus import PrivacyEngine
        from opacus.grad_sample import GradSampleModule
        from opacus.grad_sample.linear import compute_linear_grad_sample
    except ImportError:
        raise BigModelError("--dp-epsilon needs Opacus: pip install 'bigmodel[privacy]'") from None
    GradSampleModule.GRAD_SAMPLERS.setdefault(Linear, compute_linear_grad_sample)
    # Opacus' backward hooks fire on the first trainable layer although its input (frozen embeddings)
    # needs no gradient; torch warns about that at every step.
    warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
    indices = DataLoader(TensorDataset(torch.arange(examples)), batch_size=cfg.batch_size)
    engine = PrivacyEngine(accountant="rdp")
    module, optimizer, loader = engine.make_private_with_epsilon(
        module=runner, optimizer=optimizer, data_loader=indices, target_epsilon=cfg.dp_epsilon,
        target_delta=cfg.dp_delta, epochs=cfg.epochs, max_grad_norm=cfg.dp_max_grad_norm, poisson_sampling=True)
    return module, optimizer, loader, Privacy(engine, cfg.dp_delta, cfg.dp_max_grad_norm, optimizer.noise_multiplier)
