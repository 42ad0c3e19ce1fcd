"""Checkpoints in MLflow's model registry: logged as models, registered under a name and version,
moved between aliases (`@production`), and fetched back as plain folders for `--ckpt models:/...`.

A checkpoint is logged as an MLflow "pyfunc" model from code (`infer/mlflow_model.py`), never pickled:
the folder travels as the model's artefact, and `mlflow.pyfunc.load_model` gives a model whose
`predict` labels or continues texts. The registry is whichever store `--tracking-uri` names
(default: `MLFLOW_TRACKING_URI`, else `runs/mlflow.db`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigmodel import disk
from bigmodel.errors import BigModelError
from bigmodel.model.folders import WEIGHTS, resolve_checkpoint

MODEL_CODE = Path(__file__).parents[1] / "infer" / "mlflow_model.py"  # imports infer/, so it lives there
ARTEFACT = "checkpoint"  # the logged model's artefact key for the checkpoint folder
CACHE = Path(os.environ.get("BIGMODEL_CACHE", Path.home() / ".cache" / "bigmodel")) / "registry"


def import_mlflow() -> Any:
    """MLflow with its usage telemetry off unless the user turned it on, and no progress bar for the
    artefacts it copies around (a checkpoint is a handful of files)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        import mlflow
    except ImportError:
        raise BigModelError("tracking and the registry need MLflow: pip install 'bigmodel[track]'") from None
    return mlflow


def store_uri(uri: str = "") -> str:
    """`uri`, else `MLFLOW_TRACKING_URI`, else `runs/mlflow.db` under the working folder."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('runs/mlflow.db').resolve()}"


def client(uri: str = "") -> Any:
    """A client of the store `uri` (see `store_uri`), which MLflow's module functions now use too."""
    mlflow = import_mlflow()
    resolved = store_uri(uri)
    if resolved.startswith("sqlite:///"):
        Path(resolved.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(resolved)
    return mlflow.MlflowClient()


def use_experiment(name: str) -> str:
    """The id of the experiment `name` in the current store; a new one in a SQLite store keeps its
    artefacts in `mlartifacts/` beside the database file, not in the working folder."""
    mlflow = import_mlflow()
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    uri = mlflow.get_tracking_uri()
    artefacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri() \
        if uri.startswith("sqlite:///") else None
    return mlflow.create_experiment(name, artifact_location=artefacts)


def log_checkpoint(folder: Path) -> str:
    """Log a checkpoint folder as a model of the active run; returns the model's URI."""
    mlflow = import_mlflow()
    # MLflow's schema inference would like narrower types than "texts in, records out", and says so
    logging.getLogger("mlflow.models.signature").setLevel(logging.WARNING)
    info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE), artifacts={ARTEFACT: str(folder)},
                                   pip_requirements=["bigmodel"])
    return info.model_uri


@dataclass
class Version:
    name: str
    version: int
    aliases: list[str]
    run_id: str
    source: str
    created_ms: int


def register(ckpt: str, name: str, alias: str = "", uri: str = "") -> Version:
    """Register a checkpoint (or run folder) under `name`: the model its tracked run logged, else a new
    run of its own that logs it. `alias` (e.g. production) then points at the new version."""
    folder = resolve_checkpoint(ckpt)
    record = next((p / "mlflow.json" for p in (folder, folder.parent) if (p / "mlflow.json").is_file()), None)
    tracked = json.loads(record.read_text()) if record else {}
    api = client(uri or tracked.get("tracking_uri", ""))
    mlflow = import_mlflow()
    same = tracked.get("tracking_uri") == mlflow.get_tracking_uri() and tracked.get("checkpoint") == str(
        folder.resolve())
    model_uri = tracked.get("model_uri") if same else None  # the run logged this very folder
    if model_uri is None:
        experiment = use_experiment("registered")
        with mlflow.start_run(experiment_id=experiment, run_name=f"register {name}"):
            model_uri = log_checkpoint(folder)
    made = mlflow.register_model(model_uri, name)
    if alias:
        api.set_registered_model_alias(name, alias, made.version)
    return versions(name, uri or tracked.get("tracking_uri", ""))[0]


def versions(name: str, uri: str = "") -> list[Version]:
    """Every version of `name`, newest first."""
    api = client(uri)
    found = api.search_model_versions(f"name = '{name}'")
    if not found:
        raise BigModelError(f"registry {store_uri(uri)}: no model named {name!r}")
    aliases = api.get_registered_model(name).aliases  # alias -> version
    return sorted((Version(v.name, int(v.version), sorted(a for a, n in aliases.items() if int(n) == int(v.version)),
                           v.run_id or "", v.source, int(v.creation_timestamp)) for v in found),
                  key=lambda v: -v.version)


def set_alias(name: str, version: int, alias: str, uri: str = "") -> None:
    if version not in {v.version for v in versions(name, uri)}:  # versions() names a missing model
        raise BigModelError(f"registry {store_uri(uri)}: {name} has no version {version}")
    client(uri).set_registered_model_alias(name, alias, str(version))


def fetch(model_uri: str, uri: str = "") -> Path:
    """The local checkpoint folder of `models:/NAME/VERSION` or `models:/NAME@ALIAS`, downloaded once."""
    api = client(uri)
    spec = model_uri.removeprefix("models:/")
    try:
        if "@" in spec:
            name, alias = spec.split("@", 1)
            version = api.get_model_version_by_alias(name, alias)
        else:
            name, number = spec.rsplit("/", 1)
            version = api.get_model_version(name, number)
    except ValueError:
        raise BigModelError(f"{model_uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS") from None
    except Exception as e:  # MLflow's own "not found" errors carry the detail
        raise BigModelError(f"{model_uri}: {str(e).splitlines()[0]} (registry {store_uri(uri)})") from None
    store = hashlib.sha256(store_uri(uri).encode()).hexdigest()[:12]
    target = CACHE / store / version.name / str(version.version)
    folder = target / version.name  # served under the registered name
    if not folder.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            got = import_mlflow().artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version.version}",
                                                               dst_path=tmp)
            checkpoint = next(f.parent for f in Path(got, "artifacts").rglob(WEIGHTS))  # the logged folder
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            disk.replace(checkpoint, folder)
    return folder
