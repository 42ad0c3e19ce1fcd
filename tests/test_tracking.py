"""MLflow: a tracked fine-tuning run (params, per-evaluation metrics, plots, the checkpoint as a
model), the registry (versions, aliases), and `--ckpt models:/...` for predict and serve."""

from __future__ import annotations

import json
import os

import mlflow  # noqa: F401  (a dev dependency: missing, the file fails to import instead of skipping)
import pytest
import yaml

from .conftest import metric_rows, run_cli
from .test_serve import http, start_server
from .test_vision import VIT


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A small ViT fine-tuned on digits with `--track mlflow` into its own store."""
    from bigmodel.data.datasets import build

    root = tmp_path_factory.mktemp("tracked")
    build("digits", root / "digits")
    recipe = root / "vit.yaml"
    recipe.write_text(yaml.safe_dump({"model": {**VIT, "n_layer": 1}, "finetune": {
        "task": "classify", "train": str(root / "digits" / "train"), "val": str(root / "digits" / "val"),
        "out": str(root / "runs" / "vit"), "epochs": 2, "lr": 2e-3, "batch_size": 64}}))
    done = run_cli("finetune", "--config", str(recipe), "--track", "mlflow")
    assert done.returncode == 0, done.stderr[-2000:]
    os.environ["BIGMODEL_CACHE"] = str(root / "cache")  # models:/ downloads, for the CLI runs below
    return root


def store(root):

    mlflow.set_tracking_uri(f"sqlite:///{root / 'runs' / 'mlflow.db'}")
    return mlflow.MlflowClient()


def test_a_tracked_run_logs_config_metrics_plots_and_the_model(tracked):
    run_dir = tracked / "runs" / "vit"
    record = json.loads((run_dir / "mlflow.json").read_text())
    client = store(tracked)  # the default store: mlflow.db beside the run folder
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "vit"
    assert run.data.params["finetune.lr"] == "0.002" and run.data.params["model.frontend"] == "patches"
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.value for m in history] == pytest.approx([r["val_loss"] for r in metric_rows(run_dir)])
    assert [m.step for m in history] == [int(r["step"]) for r in metric_rows(run_dir)]
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss.png", "confusion.png", "config.yaml", "metrics.csv"} <= artefacts
    assert record["model_uri"].startswith("models:/")

    model = mlflow.pyfunc.load_model(record["model_uri"])  # the checkpoint, loaded through MLflow
    image = next((tracked / "digits" / "test" / "4").glob("*.png"))
    (prediction,) = model.predict([str(image)])
    assert prediction["label"] in [str(d) for d in range(10)] and sum(prediction["probabilities"].values()) == (
        pytest.approx(1.0))


def test_registry_versions_aliases_and_models_uris(tracked):
    uri = f"sqlite:///{tracked / 'runs' / 'mlflow.db'}"
    run_dir = tracked / "runs" / "vit"
    first = run_cli("registry", "register", "--ckpt", str(run_dir), "--name", "digits", "--alias", "production")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "models:/digits/1 (models:/digits@production)" in first.stdout
    record = json.loads((run_dir / "mlflow.json").read_text())
    assert store(tracked).get_model_version("digits", "1").source == record["model_uri"]  # the run's own model
    second = run_cli("registry", "register", "--ckpt", str(run_dir / "last"), "--name", "digits",
                     "--tracking-uri", uri)
    assert second.returncode == 0 and "models:/digits/2" in second.stdout
    listed = run_cli("registry", "list", "--name", "digits", "--tracking-uri", uri)
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("digits/2\t-") and lines[1].startswith("digits/1\t@production")
    moved = run_cli("registry", "alias", "--name", "digits", "--version", "2", "--alias", "production",
                    "--tracking-uri", uri)
    assert moved.returncode == 0
    assert run_cli("registry", "list", "--name", "digits", "--tracking-uri", uri).stdout.startswith(
        "digits/2\t@production")
    wrong = run_cli("registry", "alias", "--name", "digits", "--version", "9", "--alias", "production",
                    "--tracking-uri", uri)
    assert wrong.returncode == 1 and "digits has no version 9" in wrong.stderr

    image = str(next((tracked / "digits" / "test" / "4").glob("*.png")))
    env_uri = {"MLFLOW_TRACKING_URI": uri}
    os.environ.update(env_uri)
    try:
        direct = run_cli("predict", "--ckpt", str(run_dir / "last"), "--input", image, "--out", str(tracked / "a"))
        assert direct.returncode == 0
        registered = run_cli("predict", "--ckpt", "models:/digits@production", "--input", image, "--out",
                             str(tracked / "b"))
        missing = run_cli("predict", "--ckpt", "models:/digits/7", "--input", image, "--out", str(tracked / "c"))
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
    assert registered.returncode == 0, registered.stderr[-2000:]
    assert (tracked / "a").read_text() == (tracked / "b").read_text()
    assert missing.returncode == 1 and "models:/digits/7" in missing.stderr.strip().splitlines()[-1]

    proc, base = start_server("models:/digits/1", "--tracking-uri", uri)
    try:
        status, body = http(f"{base}/v1/models")
        assert status == 200 and json.loads(body)["data"][0]["id"] == "digits"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
