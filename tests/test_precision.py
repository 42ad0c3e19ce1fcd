"""`--dtype auto`: the number format chosen by what this CPU does well, and fp16 with loss scaling. (That the
quickstart plans its time in the format it really trains in is checked where its tutorial runs, tests/test_docs.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bigmodel import device as dev
from bigmodel.config import ModelConfig, TrainConfig
from bigmodel.data.batches import load_meta
from bigmodel.model.probe import training_precision
from bigmodel.train.trainer import pretrain
from tests.conftest import metric_rows, run_cli
from tests.test_train import tiny_model

ROOT = Path(__file__).resolve().parents[1]
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
SHAPE = ModelConfig(vocab_size=256, n_layer=2, n_head=4, n_embd=128, block_size=64)


def test_cpu_decision_from_measured_speedups():
    """Timings as the probe measured them on an AMX CPU (6.9x) and an AVX2-only one (0.08x)."""
    fast, warning = dev.decide_cpu("auto", 6.9)
    assert (fast.name, warning) == ("bf16", None) and "6.9x fp32" in fast.reason
    slow, _ = dev.decide_cpu("auto", 0.08)
    assert slow.name == "fp32" and "no fast bf16" in slow.reason
    assert dev.decide_cpu("auto", 1.05)[0].name == "fp32"  # within noise of fp32: not worth autocast's casts
    forced, warning = dev.decide_cpu("bf16", 0.08)
    assert forced.name == "bf16" and "12x slower" in warning
    assert dev.decide_cpu("bf16", 3.0)[1] is None
    assert dev.decide_cpu("fp16", 0.08)[0].name == "fp16"


def test_probe_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path))
    first = training_precision("auto", torch.device("cpu"), SHAPE, 8, 64)
    [speedup] = json.loads((tmp_path / "dtype_probe.json").read_text()).values()
    assert first.name == ("bf16" if speedup >= dev.FAST_ENOUGH else "fp32")

    def no_second_measurement(*_):
        raise AssertionError("measured again")

    monkeypatch.setattr(dev, "measure_bf16_speedup", no_second_measurement)
    assert training_precision("auto", torch.device("cpu"), SHAPE, 8, 64) == first
    with pytest.raises(dev.BigModelError, match="--dtype must be one of"):
        training_precision("int4", torch.device("cpu"), SHAPE, 8, 64)


def test_imitated_avx2_cpu_picks_what_it_measures(tmp_path):
    """Under PyTorch's and oneDNN's AVX2 limits the probe runs where bf16 has no native kernels; the
    choice follows the measured speed (on CPUs where the limits slow bf16 down, that is fp32)."""
    code = ("import torch, json; from bigmodel.config import ModelConfig; from bigmodel.model.probe import "
            "training_precision; p = training_precision('auto', torch.device('cpu'), ModelConfig(vocab_size=256, "
            "n_layer=2, n_head=4, n_embd=128, block_size=64), 8, 64); print(json.dumps([p.name, "
            "torch.backends.cpu.get_cpu_capability()]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, **AVX2, "BIGMODEL_CACHE": str(tmp_path)})
    name, capability = json.loads(done.stdout)
    [speedup] = json.loads((tmp_path / "dtype_probe.json").read_text()).values()
    assert capability == "AVX2"
    assert name == ("bf16" if speedup >= dev.FAST_ENOUGH else "fp32")


def test_fp16_trains_with_loss_scaling_and_resumes(shakespeare_char, tmp_path):
    model = tiny_model(load_meta(shakespeare_char)["vocab_size"])
    cfg = TrainConfig(data=str(shakespeare_char), out=str(tmp_path), max_iters=40, batch_size=8, lr=3e-3,
                      eval_interval=20, eval_iters=2, dtype="fp16")
    pretrain(model, cfg, {"model": model, "train": cfg})
    rows = metric_rows(tmp_path)
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.3
    state = torch.load(tmp_path / "last" / "trainer_state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0
    assert yaml.safe_load((tmp_path / "last" / "config.yaml").read_text())["train"]["dtype"] == "fp16"
    longer = TrainConfig(**{**cfg.__dict__, "max_iters": 60, "resume": True})
    pretrain(model, longer, {"model": model, "train": longer})
    assert [r["iter"] for r in metric_rows(tmp_path)] == [0, 20, 40, 60]


def test_auto_is_saved_as_auto_and_said_once(shakespeare_char, tmp_path):
    done = run_cli("pretrain", "--data", str(shakespeare_char), "--out", str(tmp_path), "--preset", "baby",
                   "--n-layer", "1", "--max-iters", "4", "--eval-interval", "4", "--eval-iters", "1")
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stdout.splitlines() if line.startswith("dtype auto -> ")]
    assert len(said) == 1 and said[0].split(" -> ")[1].split(":")[0] in ("fp32", "bf16")
    assert yaml.safe_load((tmp_path / "last" / "config.yaml").read_text())["train"]["dtype"] == "auto"
    ev = run_cli("evaluate", "--ckpt", str(tmp_path), "--data", str(shakespeare_char), "--dtype", "fp32")
    assert ev.returncode == 0 and "dtype fp32 -> fp32: asked for" in ev.stderr


def test_every_shipped_config_says_auto_or_nothing():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        for section in yaml.safe_load(path.read_text()).values():
            if isinstance(section, dict) and "dtype" in section:
                assert section["dtype"] == "auto", path.name

