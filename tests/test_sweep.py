"""`bigmodel sweep`: Optuna trials over a recipe, pruned on intermediate evaluations, kept in SQLite so
a killed sweep continues where it stopped; best.yaml and the plots at the end."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from .conftest import metric_rows, run_cli


def sweep_command(recipe, out, trials):
    return ["sweep", "--config", str(recipe), "--trials", str(trials), "--out", str(out),
            "--param", "lr=loguniform:1e-4:1e-2", "--param", "batch_size=choice:4,8",
            "--param", "model.n_embd=choice:16,32"]


@pytest.fixture
def recipe(shakespeare_char, tmp_path):
    from bigmodel.data.batches import load_meta

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"vocab_size": load_meta(shakespeare_char)["vocab_size"], "n_layer": 1, "n_head": 2,
                  "n_embd": 32, "block_size": 32},
        "train": {"data": str(shakespeare_char), "max_iters": 60, "eval_interval": 15, "eval_iters": 2,
                  "warmup_iters": 5, "batch_size": 8}}))
    return path


def load_study(out):
    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")


def test_a_killed_sweep_continues_and_reports_the_best_trial(recipe, tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "bigmodel.cli", *sweep_command(recipe, out, 5)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    third = out / "trial-002" / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline and not (third.is_file() and metric_rows(third.parent)):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the sweep finished before it could be killed"
    before = {t.number: t.params for t in load_study(out).trials if t.state.is_finished()}
    assert sorted(before) == [0, 1]

    resumed = run_cli(*sweep_command(recipe, out, 5))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    study = load_study(out)
    states = {t.number: t.state for t in study.trials}
    assert states[2] == optuna.trial.TrialState.FAIL  # the interrupted trial ...
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == 2)
    assert retry.params == study.trials[2].params and retry.state.is_finished()  # ... ran again, same values
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(done) == 5
    assert {t.number: t.params for t in done if t.number in before} == before  # finished trials were kept
    for t in done:  # every evaluation reached the pruner; a trial's value is its best val loss
        rows = metric_rows(out / f"trial-{t.number:03d}")
        seen = {int(r["iter"]) * t.params["batch_size"]: r["val_loss"] for r in rows}  # sequences seen
        assert t.intermediate_values == pytest.approx(seen)
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == pytest.approx(min(r["val_loss"] for r in rows))

    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["train"]["lr"] == study.best_params["lr"] and best["model"]["n_embd"] == study.best_params[
        "model.n_embd"]
    assert (out / "history.png").stat().st_size > 5000 and (out / "importance.png").stat().st_size > 5000
    assert f"best val_loss {study.best_value:.4f}" in resumed.stdout


@pytest.mark.parametrize("param, fragment", [
    ("lr=foo:1", "expected FIELD=loguniform"),
    ("lr=loguniform:0:1", "LOW > 0"),
    ("lr=uniform:1:x", "two numbers"),
    ("n_layer=int:1:3", "not a field of the train: section"),
])
def test_a_bad_param_is_one_clear_line(recipe, tmp_path, param, fragment):
    done = run_cli("sweep", "--config", str(recipe), "--out", str(tmp_path / "s"), "--param", param)
    assert done.returncode == 1
    assert fragment in done.stderr.strip().splitlines()[-1] and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("task, metric, lower", [("classify", "accuracy", False), ("regress", "mse", True),
                                                 ("qa", "f1", False), ("ctc", "cer", True),
                                                 ("seq2seq", "val_loss", True)])
def test_a_sweep_optimises_what_its_runs_keep_their_best_checkpoint_by(task, metric, lower):
    from bigmodel.tasks import LOWER_IS_BETTER
    from bigmodel.train.sweep import default_metric

    assert default_metric({"finetune": {"task": task}}) == metric
    assert (metric in LOWER_IS_BETTER) == lower
    assert default_metric({"train": {}}) == "val_loss" and "val_loss" in LOWER_IS_BETTER
