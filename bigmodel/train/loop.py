"""The one training loop. Pretraining (`trainer.py`) and fine-tuning (`finetune.py`) say what a step,
an evaluation and a checkpoint are; this skeleton says when each happens and keeps the promises
both make: the NaN guard before anything is saved, evaluation every `eval_every` steps with the best
one kept in `best/` (and early stopping when the run has patience), `last/` every `save_every` steps
with what an exact resume needs, a progress bar with the loss and the rate, and every figure sent
to the tracker (metrics.csv, loss.png, TensorBoard, MLflow, a sweep's pruner).
"""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path
from typing import Any

import torch

from bigmodel.train import distributed
from bigmodel.train.optim import KeepBest, finite
from bigmodel.train.track import Tracker


class Loop:
    """What a run sets up before `fit`: `dist`, `out`, `optimizer`, `scaler`, `best`, `start_step`,
    `total_steps`, `eval_every`, `save_every` and `metric` (the figure `best` watches)."""

    dist: distributed.Dist
    out: Path
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    best: KeepBest
    start_step: int = 0
    total_steps: int
    eval_every: int
    save_every: int
    metric: str = "val_loss"
    evaluate_first: bool = False  # also measure (and save) the starting point, before any step
    step_name: str = "step"  # how an error message names a step
    spent: dict[str, float]  # training seconds, and what each run tallies (tokens, examples), across resumes

    def __init__(self) -> None:
        self.spent = {"seconds": 0.0}

    def tracker(self) -> Tracker:
        raise NotImplementedError

    def train_step(self, step: int) -> tuple[float, int, int]:
        """One optimizer step: the loss summed over this process's units (examples or target tokens), those
        units, and what the rate counts (tokens or examples)."""
        raise NotImplementedError

    def figures(self, step: int, train_loss: float, rate: float, elapsed: float) -> dict[str, float]:
        """The evaluation row logged after `step` steps, with the validation figures."""
        raise NotImplementedError

    def save(self, name: str, step: int, figures: dict[str, float]) -> None:
        raise NotImplementedError

    def learning_rate(self, step: int) -> float:
        raise NotImplementedError

    def on_best(self) -> None:
        """In every process, after a new best checkpoint: what the run keeps of it (nothing by default)."""

    def on_evaluation(self, step: int, figures: dict[str, float]) -> None:
        """In every process, after each evaluation (step 0: the starting point): what the run makes of it."""

    def result(self, last: dict[str, float]) -> dict[str, float]:
        """What `fit` returns, from the last evaluation (default: that evaluation)."""
        return last

    def compute(self, step: int) -> dict[str, Any]:
        """What training has cost up to `step`: wall seconds, steps, what was counted, and the machine."""
        from bigmodel.device import machine

        seconds = self._seconds()
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
        tallies = {k: int(v) for k, v in self.spent.items() if k != "seconds"}
        return {"seconds": round(seconds, 1), "steps": step, **tallies,
                "processes": self.dist.world_size, "device": self.dist.device.type, "peak_rss_gb": round(peak_gb, 2),
                **{k: v if isinstance(v, int) else str(v) for k, v in machine().items()}}  # plain for YAML

    def _seconds(self) -> float:
        """Training wall time so far: this run's and the runs it resumed."""
        return self.spent["seconds"] + time.perf_counter() - self._started

    def state(self, step: int) -> dict[str, Any]:
        """What every resumable run keeps in `last/`; runs add their own (optimizer, sampler, adapters)."""
        spent = {**self.spent, "seconds": self._seconds()}
        state = {"step": step, "best": self.best.state(), "spent": spent, **self.dist.rng_states()}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def restore_state(self, state: dict[str, Any]) -> None:
        self.start_step = int(state["step"])
        self.spent.update(state.get("spent", {}))
        self.best.restore(state["best"])
        if self.scaler.is_enabled() and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.dist.restore_rng(state)

    def fit(self) -> dict[str, float]:
        """Train to `total_steps` (or until patience runs out)."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.last: dict[str, float] = {}  # the latest evaluation
        started = window_start = self._started = time.perf_counter()
        window = [0.0, 0, 0]  # loss summed, its units, what the rate counts: since the last evaluation
        shown = math.nan
        with self.tracker() as self._tracker:
            step = self.start_step
            if self.evaluate_first:  # the starting point (a resumed run: where it resumes), measured and kept
                self._checkpoints(step, window, 0.0, 0.0)
            while step < self.total_steps:
                loss, units, counted = self.train_step(step)
                if units:  # a Poisson batch (DP-SGD) may be empty: nothing learnt, nothing to show
                    shown = finite(loss / units, f"{self.step_name} {step + 1}", self.out / "last")
                step += 1
                window = [window[0] + loss, window[1] + units, window[2] + counted]
                rate = window[2] / max(time.perf_counter() - window_start, 1e-9)
                self._tracker.step(shown, self.learning_rate(step - 1), rate)
                if self._checkpoints(step, window, rate, time.perf_counter() - started):
                    if self.best.exhausted:
                        break
                    window_start, window = time.perf_counter(), [0.0, 0, 0]
        return self.result(self.last)

    def _checkpoints(self, step: int, window: list, rate: float, elapsed: float) -> bool:
        """Evaluate, keep the best and save `last/` where `step` calls for it; True when it evaluated."""
        end = step == self.total_steps
        evaluated = step % self.eval_every == 0 or end
        if evaluated:
            loss_sum, units = self.dist.sum(window[0], window[1])
            self.last = self.figures(step, loss_sum / max(units, 1), rate, elapsed)
            self._tracker.evaluation(self.last)
            self.on_evaluation(step, self.last)
            if self.best.improved(self.last[self.metric]):
                self.save("best", step, self.last)
                self.on_best()
        if step % self.save_every == 0 or end:
            self.save("last", step, self.last)
        return evaluated
