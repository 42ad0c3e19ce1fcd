"""Hyperparameter search over a recipe with Optuna: `bigmodel sweep --config FILE --trials N --param ...`.

Each trial is an ordinary fine-tuning (or pretraining) run of the recipe with some fields drawn
by Optuna's TPE sampler, in `OUT/trial-NNN`. Its evaluations are reported to a median pruner, which
stops trials that fall behind the others at the same point (never in the first quarter of the run).
The study lives in `OUT/study.db` (SQLite) with a heartbeat, so a killed sweep re-run with the
same command continues: finished trials stay, and the trial the kill interrupted is run again
with the same values. At the end:
`best.yaml` (the recipe with the best values), `history.png` and `importance.png`.

A `--param` is `FIELD=KIND:ARGS`, FIELD a field of the recipe's stage (`lr`) or `model.FIELD`:
`loguniform:1e-5:1e-3`, `uniform:0:0.3`, `int:1:4`, `choice:16,32,64`.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bigmodel.config import FinetuneConfig, ModelConfig, TrainConfig, resolve
from bigmodel.errors import BigModelError
from bigmodel.tasks import GOALS, LOWER_IS_BETTER

HEARTBEAT_S = 2  # a trial silent for GRACE_S seconds belonged to a killed sweep
GRACE_S = 6


@dataclass(frozen=True)
class Param:
    field: str  # `lr`, or `model.n_layer`
    kind: str  # loguniform | uniform | int | choice
    values: tuple[Any, ...]  # (low, high), or the choices

    @classmethod
    def parse(cls, text: str) -> Param:
        field, _, spec = text.partition("=")
        kind, _, rest = spec.partition(":")
        if not field or kind not in ("loguniform", "uniform", "int", "choice") or not rest:
            raise BigModelError(f"--param {text!r}: expected FIELD=loguniform:LOW:HIGH, uniform:LOW:HIGH, "
                                "int:LOW:HIGH or choice:A,B,...")
        if kind == "choice":
            return cls(field, kind, tuple(yaml.safe_load(v) for v in rest.split(",")))
        try:
            low, high = (float(v) if kind != "int" else int(v) for v in rest.split(":"))
        except ValueError:
            raise BigModelError(f"--param {text!r}: {kind} needs two numbers, LOW:HIGH") from None
        if not low < high or (kind == "loguniform" and low <= 0):
            raise BigModelError(f"--param {text!r}: need LOW < HIGH" + (" and LOW > 0" if kind == "loguniform" else ""))
        return cls(field, kind, (low, high))

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.field, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(self.field, *self.values)
        return trial.suggest_float(self.field, *self.values, log=self.kind == "loguniform")


def stage_of(recipe: dict[str, Any]) -> str:
    """`finetune` or `train` (pretraining): the section the trials vary."""
    if "finetune" in recipe:
        return "finetune"
    if "train" in recipe:
        return "train"
    raise BigModelError("sweep needs a recipe with a finetune: or a train: section")


def with_values(recipe: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The recipe with `values` (`field` in its stage, `model.field` in its model section) set."""
    out, stage = copy.deepcopy(recipe), stage_of(recipe)
    for name, value in values.items():
        section, _, field = name.rpartition(".")
        out.setdefault(section or stage, {})[field] = value
    return out


class Pruning:
    """A `Sink` that reports a trial's evaluations to Optuna and stops the trial when told to.

    Evaluations are reported by how much data the trial has seen (thousandths of an epoch when
    fine-tuning, sequences when pretraining), so trials of different batch sizes compare fairly."""

    def __init__(self, trial: Any, metric: str, minimize: bool, progress: Callable[[dict[str, float]], int]) -> None:
        self.trial, self.metric, self.minimize, self.progress = trial, metric, minimize, progress
        self.best: float | None = None

    def evaluation(self, row: dict[str, float]) -> None:
        import optuna

        if self.metric not in row:
            raise BigModelError(f"--metric {self.metric}: the run reports {', '.join(sorted(row))}")
        value, seen = row[self.metric], self.progress(row)
        better = min if self.minimize else max
        self.best = value if self.best is None else better(self.best, value)
        self.trial.report(value, seen)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric} {value:.4f} at progress {seen}")

    def close(self, error: BaseException | None) -> None:
        """Nothing to release: the study records the trial's end."""


def check_fields(params: list[Param], stage: str) -> None:
    """Every --param names a field of the stage's config or of the model's."""
    known = {"model": ModelConfig, stage: FinetuneConfig if stage == "finetune" else TrainConfig}
    for p in params:
        section, _, name = p.field.rpartition(".")
        cls = known.get(section or stage)
        if cls is None or name not in {f.name for f in dataclasses.fields(cls)}:
            raise BigModelError(f"--param {p.field}: not a field of the {section or stage}: section "
                                f"(fields of the model section are written model.FIELD)")


def default_metric(recipe: dict[str, Any]) -> str:
    """The figure the runs themselves keep their best checkpoint by."""
    if stage_of(recipe) == "finetune":
        return GOALS.get(recipe["finetune"].get("task", "classify"), ("val_loss", True))[0]
    return "val_loss"


def run_trial(recipe: dict[str, Any], pruning: Pruning) -> None:
    """Train the trial's recipe; its figures reach `pruning` at every evaluation."""
    if stage_of(recipe) == "finetune":
        from bigmodel.train.finetune import finetune, finetune_configs

        finetune(*finetune_configs(recipe), sinks=[pruning])
    else:
        from bigmodel.train.trainer import layered_configs, pretrain

        pretrain(*layered_configs(recipe), sinks=[pruning])


def progress_of(recipe: dict[str, Any]) -> Callable[[dict[str, float]], int]:
    """How far an evaluation row is into training, in the units the pruner compares."""
    if stage_of(recipe) == "finetune":
        return lambda row: round(row["epoch"] * 1000)
    train = resolve(TrainConfig, recipe["train"])
    return lambda row: int(row["iter"]) * train.batch_size * train.grad_accum


def budget(recipe: dict[str, Any]) -> int:
    """The recipe's whole run in those units; the pruner waits for its first quarter."""
    if stage_of(recipe) == "finetune":
        return resolve(FinetuneConfig, recipe["finetune"]).epochs * 1000
    train = resolve(TrainConfig, recipe["train"])
    return train.max_iters * train.batch_size * train.grad_accum


def counted(study: Any) -> int:
    """Trials that are over for good: finished, pruned, or failed and not being retried."""
    from optuna.trial import TrialState

    retried = {n for t in study.trials for n in t.system_attrs.get("retry_history", [])}
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or
               (t.state == TrialState.FAIL and t.number not in retried) for t in study.trials)


def settle_interrupted(study: Any) -> None:
    """Trials a killed sweep left running: once their heartbeat is stale, mark them failed, which
    queues each again with the same values (a trial another live worker runs keeps beating)."""
    import time

    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    if running:
        print(f"sweep: trial(s) {running} were running when the sweep stopped; checking their heartbeat",
              flush=True)
        time.sleep(GRACE_S + HEARTBEAT_S)
        fail_stale_trials(study)


def sweep(recipe: dict[str, Any], params: list[Param], trials: int, out: Path, metric: str = "",
          track: str = "none", tracking_uri: str = "", seed: int = 0) -> Any:
    """Run (or continue) the study until `trials` trials are over; returns the Optuna study."""
    try:
        import optuna
    except ImportError:
        raise BigModelError("sweep needs Optuna: pip install 'bigmodel[sweep]'") from None
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    if not params:
        raise BigModelError("sweep needs at least one --param FIELD=KIND:ARGS")
    stage, metric = stage_of(recipe), metric or default_metric(recipe)
    check_fields(params, stage)
    minimize = metric in LOWER_IS_BETTER
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the heartbeat's retry callback is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(f"sqlite:///{out.resolve() / 'study.db'}", heartbeat_interval=HEARTBEAT_S,
                             grace_period=GRACE_S, heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback())
    study = optuna.create_study(study_name=out.name, storage=storage, load_if_exists=True,
                                direction="minimize" if minimize else "maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3,
                                                                   n_warmup_steps=budget(recipe) // 4))
    study.set_user_attr("metric", metric)
    settle_interrupted(study)

    def objective(trial: optuna.Trial) -> float:
        values = {p.field: p.suggest(trial) for p in params}
        run = with_values(recipe, values)
        run[stage].update(out=str(out / f"trial-{trial.number:03d}"), resume=False, track=track,
                          tracking_uri=tracking_uri)
        pruning = Pruning(trial, metric, minimize, progress_of(run))
        run_trial(run, pruning)
        if pruning.best is None:
            raise BigModelError(f"trial {trial.number}: the run finished without an evaluation")
        return pruning.best

    while counted(study) < trials:
        study.optimize(objective, n_trials=1, catch=(BigModelError,))
    write_outputs(study, recipe, out)
    return study


def write_outputs(study: Any, recipe: dict[str, Any], out: Path) -> None:
    """best.yaml, and Optuna's history and importance plots as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as plots

    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise BigModelError(f"{out}: no trial completed; see the trial folders' logs")
    best = with_values(recipe, study.best_params)
    (out / "best.yaml").write_text(f"# best of {len(completed)} completed trials: {study.user_attrs['metric']} "
                                   f"{study.best_value:.4f} (trial {study.best_trial.number})\n"
                                   + yaml.safe_dump(best, sort_keys=False))
    with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        figures = {"history.png": plots.plot_optimization_history}
        if len(completed) > 1 and len(study.best_params) > 0:
            figures["importance.png"] = plots.plot_param_importances
        for name, plot in figures.items():
            ax = plot(study)
            ax.figure.set_size_inches(8, 4.5)
            ax.figure.tight_layout()
            ax.figure.savefig(out / name, dpi=110)
            matplotlib.pyplot.close(ax.figure)
