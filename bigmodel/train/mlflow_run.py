"""A training run recorded in MLflow (`--track mlflow`): the resolved config as params, every
evaluation's figures as metrics, the plots and config as artefacts, the best checkpoint as a model.

The run's id is kept in `mlflow.json` inside the run folder, so `--resume` continues the same
MLflow run and `bigmodel registry register --ckpt RUN` finds the model it logged. The store defaults
to `mlflow.db` (SQLite) beside the run folder, with artefacts in `mlartifacts/` next to it:
`mlflow ui --backend-store-uri sqlite:///runs/mlflow.db` shows every run under `runs/`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from bigmodel.model.registry import client, import_mlflow, log_checkpoint, use_experiment

RECORD = "mlflow.json"
PLOTS = ("loss.png", "confusion.png")


def flat_params(sections: dict[str, Any]) -> dict[str, str]:
    """`section.field` → value, for every field of the resolved config (dataclasses or mappings)."""
    params = {}
    for name, section in sections.items():
        values = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section
        if isinstance(values, dict):
            params.update({f"{name}.{k}": str(v) for k, v in values.items()})
        elif values is not None:
            params[name] = str(values)
    return params


class MlflowRun:
    """The sink `Tracker` feeds on the main process: opened with the run, closed with it."""

    def __init__(self, run_dir: Path, sections: dict[str, Any], uri: str, x: str) -> None:
        mlflow = import_mlflow()
        self.run_dir, self.x = run_dir, x
        self.uri = uri or f"sqlite:///{run_dir.resolve().parent / 'mlflow.db'}"
        client(self.uri)
        experiment = use_experiment(run_dir.resolve().parent.name or "bigmodel")
        record = run_dir / RECORD
        previous = json.loads(record.read_text()).get("run_id") if record.is_file() else None
        if previous and not self._known(previous, experiment):
            previous = None  # the folder was tracked in another store: start afresh in this one
        self.run = mlflow.start_run(run_id=previous, experiment_id=None if previous else experiment,
                                    run_name=run_dir.name)
        if previous is None:
            mlflow.log_params(flat_params(sections))
        record.write_text(json.dumps({"run_id": self.run.info.run_id, "tracking_uri": self.uri}, indent=2))

    @staticmethod
    def _known(run_id: str, experiment: str) -> bool:
        try:
            return import_mlflow().get_run(run_id).info.experiment_id == experiment
        except Exception:  # MLflow raises its own error for a run id the store never saw
            return False

    def evaluation(self, row: dict[str, float]) -> None:
        import_mlflow().log_metrics({k: float(v) for k, v in row.items() if k != self.x}, step=int(row[self.x]))

    def close(self, error: BaseException | None) -> None:
        """Artefacts and the model, then end the run: FINISHED, KILLED (interrupted or pruned) or FAILED."""
        mlflow = import_mlflow()
        for name in PLOTS + ("metrics.csv",):
            if (self.run_dir / name).is_file():
                mlflow.log_artifact(str(self.run_dir / name))
        best = next((self.run_dir / n for n in ("best", "last") if (self.run_dir / n / "config.yaml").is_file()),
                    None)
        if best is not None:
            mlflow.log_artifact(str(best / "config.yaml"))
        if best is not None and error is None:
            model_uri = log_checkpoint(best)
            record = self.run_dir / RECORD
            record.write_text(json.dumps({**json.loads(record.read_text()), "model_uri": model_uri,
                                          "checkpoint": str(best.resolve())}, indent=2))
        interrupted = error is not None and type(error).__name__ in ("KeyboardInterrupt", "TrialPruned")
        mlflow.end_run("FINISHED" if error is None else "KILLED" if interrupted else "FAILED")
