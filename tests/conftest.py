"""Shared fixtures: small real corpora, prepared once per session, and a tiny trained model."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch

from bigmodel import cli
from bigmodel.config import DataConfig, ModelConfig, TrainConfig
from bigmodel.data.prepare import prepare
from bigmodel.train.trainer import pretrain

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One pytest-xdist worker per core: each, and every command it runs, keeps to one thread, so two
    # workers share two cores instead of four threads contending for them.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"
TANGPOEMS = SHARED / "tangpoems" / "input.txt"


def run_cli(*args: str, fresh: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `bigmodel ARGS` as a user would: the CLI's own `main`, its exit status and what it printed.

    In this interpreter, which has imported torch already (3 s a command saved, a few hundred times a
    run); `fresh` starts a new one, for a command that could otherwise hang the test (a server)."""
    if fresh:
        return subprocess.run([sys.executable, "-m", "bigmodel.cli", *args], capture_output=True, text=True,
                              timeout=timeout)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(list(args))
        except SystemExit as e:  # argparse's usage errors
            status = e.code if isinstance(e.code, int) else 1
        except Exception:  # what a fresh interpreter would print on its way out
            traceback.print_exc()
            status = 1
    return subprocess.CompletedProcess(["bigmodel", *args], status, out.getvalue(), err.getvalue())


def error_line(done: subprocess.CompletedProcess) -> str:
    """The one-line error of a failed command: exit status 1, no traceback, and nothing else on stderr
    but the number-format note verbs that run a model print before they read their input."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and lines and "Traceback" not in done.stderr, done.stderr
    assert all(line.startswith("dtype ") for line in lines[:-1]), done.stderr
    return lines[-1]


def metric_rows(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def kill_then_resume(args: list[str], run_dir: Path, settle: float = 0.0) -> None:
    """Run `bigmodel ARGS`, SIGKILL it `settle` seconds after its second evaluation row, then run it
    again with `--resume`; fails unless the kill landed mid-run and the resumed run finished."""
    proc = subprocess.Popen([sys.executable, "-m", "bigmodel.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and (not (run_dir / "metrics.csv").is_file() or len(metric_rows(run_dir)) < 2):
        time.sleep(0.01)
    time.sleep(settle)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cli(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    """`bigmodel ARGS` as `processes` processes under torchrun on loopback (gloo on the CPU)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "bigmodel.cli",
                           *args], capture_output=True, text=True, timeout=600)


def assert_same_curves(single: list[dict], double: list[dict], x: str, rel: float) -> None:
    """Two runs' metrics.csv rows agree: same evaluation points, train and val losses within `rel`."""
    assert [r[x] for r in single] == [r[x] for r in double]
    for a, b in zip(single, double, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=rel, nan_ok=True)  # a fine-tune's step 0: NaN
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=rel)


def shared_file(path: Path) -> Path:
    """A file of ../shared/data the suite needs; its absence fails the test (CI must not skip silently)."""
    if not path.is_file():
        pytest.fail(f"{path} is missing: the tests read ../shared/data beside the checkout (see its SOURCE.md)")
    return path


@pytest.fixture(scope="session")
def shakespeare_char(tmp_path_factory) -> Path:
    shared_file(SHAKESPEARE)
    out = tmp_path_factory.mktemp("shakespeare_char")
    prepare(DataConfig(input=[str(SHAKESPEARE)], out=str(out), tokenizer="char", dedup=False))
    return out


def tiny_model(vocab_size: int, **overrides) -> ModelConfig:
    values = dict(vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=32)
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture(scope="session")
def trained_run(shakespeare_char, tmp_path_factory) -> Path:
    """A char-level model trained for a few seconds: enough to beat the uniform guess."""
    from bigmodel.data.batches import load_meta

    out = tmp_path_factory.mktemp("run")
    model = tiny_model(load_meta(shakespeare_char)["vocab_size"])
    train = TrainConfig(data=str(shakespeare_char), out=str(out), max_iters=150, batch_size=16, lr=3e-3,
                        warmup_iters=10, eval_interval=50, eval_iters=5)
    pretrain(model, train, {"model": model, "train": train})
    return out


CUDA_NOTE = ("cuda tests deselected: no CUDA device here; on a GPU machine run `python -m pytest -m cuda` "
             "(tests/test_cuda.py)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: the smallest case of a verb on cuda:0 (python -m pytest -m cuda)")


def selects_cuda(config: pytest.Config) -> bool:
    """CUDA tests run where a GPU is, or where `-m` asks for them (and fail loudly without one)."""
    return torch.cuda.is_available() or "cuda" in (config.getoption("-m") or "")


def keep_module_fixtures_on_one_worker(items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup` xdist hands tests out one at a time to whichever worker is free, which keeps
    both cores busy to the end; the tests of a module that share a module-scoped fixture (a trained model,
    a tutorial's working folder) go to one worker together, so the fixture is built once."""
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        if fixtures and any(defs[-1].scope == "module" for defs in fixtures.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def pytest_report_header(config: pytest.Config) -> str | None:
    return None if selects_cuda(config) else CUDA_NOTE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep_module_fixtures_on_one_worker(items)
    if selects_cuda(config):
        return
    cuda = [item for item in items if item.get_closest_marker("cuda")]
    if cuda:
        items[:] = [item for item in items if not item.get_closest_marker("cuda")]
        config.hook.pytest_deselected(items=cuda)
