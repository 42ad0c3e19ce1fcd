"""What pretraining and fine-tuning share: AdamW, learning-rate schedules, the number format, the
clipped optimizer step and keep-best with patience. One place, so the two loops cannot drift."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from bigmodel.config import FinetuneConfig, ModelConfig, TrainConfig
from bigmodel.errors import BigModelError
from bigmodel.model.probe import training_precision


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig | FinetuneConfig, device: torch.device
                   ) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, with weight decay on matrices only: biases and
    norm gains are left alone."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def run_precision(cfg: TrainConfig | FinetuneConfig, device: torch.device, model: ModelConfig, batch: int,
                  length: int, speak: bool = True) -> tuple[Any, torch.amp.GradScaler]:
    """`cfg` with its `--dtype` made concrete for training `model` on this device (auto: a probe of one
    step at this batch shape), and the gradient scaler the loop steps through (active for fp16 only).
    The choice is printed once."""
    precision = training_precision(cfg.dtype, device, model, batch, length)
    if speak:
        print(f"dtype {cfg.dtype} -> {precision.line()}", flush=True)
    return replace(cfg, dtype=precision.name), precision.scaler(device)


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Pretraining: linear warm-up to `lr`, cosine decay to `min_lr` at `lr_decay_iters`, then flat."""
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return cfg.min_lr
    progress = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def linear_lr(step: int, lr: float, warmup_steps: int, total_steps: int) -> float:
    """Fine-tuning (BERT's schedule): linear warm-up to `lr`, then linear decay to zero."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    return lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def optimizer_step(optimizer: torch.optim.Optimizer, lr: float, grad_clip: float,
                   scaler: torch.amp.GradScaler | None = None) -> None:
    """Clip the gradients' global norm (0 disables), step at `lr`, and clear the gradients.
    With an active fp16 `scaler` the gradients are unscaled first, and a step whose gradients
    overflowed is skipped (the scaler then lowers its scale)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@dataclass
class KeepBest:
    """Tracks the best evaluation so far; `patience` evaluations without a gain mean stop (0: never)."""

    minimize: bool
    patience: int = 0
    best: float = math.nan
    stale: int = 0

    def improved(self, value: float) -> bool:
        """Record one evaluation; True when it is the best yet. A figure that is not a number (a NaN evaluation)
        is never the best: it would otherwise be kept, and win against nothing until a real one came."""
        better = math.isfinite(value) and (math.isnan(self.best) or (value < self.best if self.minimize
                                                                       else value > self.best))
        if better:
            self.best, self.stale = value, 0
        else:
            self.stale += 1
        return better

    @property
    def exhausted(self) -> bool:
        return self.patience > 0 and self.stale >= self.patience

    def state(self) -> dict[str, Any]:
        return asdict(self)

    def restore(self, state: dict[str, Any]) -> None:
        self.best, self.stale = float(state["best"]), int(state["stale"])


def finite(loss: float, where: str, last: Path) -> float:
    """`loss`, unless training diverged: then stop before anything is saved over `last`, the good checkpoint."""
    if not math.isfinite(loss):
        raise BigModelError(f"loss became {loss} at {where}; stopped without saving. The last good checkpoint is "
                            f"{last} (try a lower --lr or --grad-clip)")
    return loss
