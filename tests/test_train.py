import math
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from bigmodel.config import TrainConfig
from bigmodel.data.batches import load_meta
from bigmodel.errors import BigModelError
from bigmodel.model.checkpoint import load_checkpoint
from bigmodel.train.optim import lr_at
from bigmodel.train.trainer import pretrain

from .conftest import (
    SHAKESPEARE,
    assert_same_curves,
    error_line,
    kill_then_resume,
    metric_rows,
    run_cli,
    tiny_model,
    torchrun_cli,
)


def test_training_lowers_loss_and_leaves_a_readable_run(trained_run):
    metrics = metric_rows(trained_run)
    assert [r["iter"] for r in metrics] == [0, 50, 100, 150]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 1.0
    assert metrics[-1]["tokens_per_s"] > 0
    assert (trained_run / "loss.png").stat().st_size > 10_000
    for name in ("best", "last"):
        files = {p.name for p in (trained_run / name).iterdir()}
        assert {"model.safetensors", "model.json", "config.yaml", "tokenizer.json", "trainer_state.pt"} <= files
    assert not list(trained_run.glob("*.tmp"))


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110)
    assert lr_at(0, cfg) < lr_at(9, cfg) < 1e-3
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(5.5e-4)
    assert lr_at(110, cfg) == pytest.approx(1e-4) and lr_at(500, cfg) == pytest.approx(1e-4)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(shakespeare_char, tmp_path):
    model = tiny_model(load_meta(shakespeare_char)["vocab_size"])
    cfg = TrainConfig(data=str(shakespeare_char), out=str(tmp_path), max_iters=200, lr=1e6, warmup_iters=0,
                      min_lr=1e6, grad_clip=0, eval_interval=1000, eval_iters=1, batch_size=4)
    with pytest.raises(BigModelError, match="loss became (nan|inf) at iteration"):
        pretrain(model, cfg, {"model": model, "train": cfg})
    assert (tmp_path / "last" / "model.safetensors").is_file()  # saved at iteration 0, untouched


def _pretrain_cmd(data, out, **overrides):
    flags = {"n-layer": 2, "n-head": 2, "n-embd": 64, "block-size": 64, "batch-size": 16, "max-iters": 300,
             "eval-interval": 100, "save-interval": 25, "eval-iters": 4, "dropout": 0.1, "seed": 7}
    flags.update({k.replace("_", "-"): v for k, v in overrides.items()})
    pairs = [(f"--{k}", str(v)) for k, v in flags.items()]
    return ["pretrain", "--data", str(data), "--out", str(out), *(arg for pair in pairs for arg in pair)]


def _bigmodel(args):
    return [sys.executable, "-m", "bigmodel.cli", *args]


def _losses(run_dir):
    return [(r["iter"], r["train_loss"], r["val_loss"]) for r in metric_rows(run_dir)]


def test_sigkilled_run_resumes_to_the_same_final_loss(shakespeare_char, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_bigmodel(_pretrain_cmd(shakespeare_char, whole)), check=True, capture_output=True)

    kill_then_resume(_pretrain_cmd(shakespeare_char, killed), killed, settle=0.3)  # between two checkpoints
    assert _losses(killed) == _losses(whole)
    computed = [yaml.safe_load((run / "last" / "config.yaml").read_text())["compute"] for run in (whole, killed)]
    assert computed[0]["tokens"] == computed[1]["tokens"] > 0  # the card's tally survives the kill
    a, b = load_file(whole / "last" / "model.safetensors"), load_file(killed / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_torchrun_matches_one_process_at_the_same_global_batch(shakespeare_char, tmp_path):
    common = dict(max_iters=60, eval_interval=20, save_interval=60, dropout=0)
    one = _pretrain_cmd(shakespeare_char, tmp_path / "one", batch_size=16, **common)
    subprocess.run(_bigmodel(one), check=True, capture_output=True)
    result = torchrun_cli(*_pretrain_cmd(shakespeare_char, tmp_path / "two", batch_size=8, **common))
    assert result.returncode == 0, result.stderr[-2000:]
    single, double = metric_rows(tmp_path / "one"), metric_rows(tmp_path / "two")
    assert [r["iter"] for r in single] == [0, 20, 40, 60]
    assert_same_curves(single, double, "iter", rel=2e-3)
    assert double[-1]["val_loss"] < double[0]["val_loss"] - 0.5


def test_tensorboard_events_and_bf16_autocast(shakespeare_char, tmp_path):
    model = tiny_model(load_meta(shakespeare_char)["vocab_size"])
    cfg = TrainConfig(data=str(shakespeare_char), out=str(tmp_path), max_iters=40, batch_size=8, lr=3e-3,
                      eval_interval=20, eval_iters=2, dtype="bf16", tensorboard=True)
    result = pretrain(model, cfg, {"model": model, "train": cfg})
    assert result["val_loss"] < metric_rows(tmp_path)[0]["val_loss"]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_masked_lm_pretraining_lowers_loss_and_raises_masked_accuracy(shakespeare_char, tmp_path):
    model = tiny_model(load_meta(shakespeare_char)["vocab_size"], causal=False, n_embd=64)
    cfg = TrainConfig(data=str(shakespeare_char), out=str(tmp_path), objective="mlm", max_iters=800, batch_size=32,
                      lr=3e-3, warmup_iters=20, eval_interval=400, eval_iters=8)
    pretrain(model, cfg, {"model": model, "train": cfg})
    first, *_, last = metric_rows(tmp_path)
    assert last["val_loss"] < first["val_loss"] - 1.0
    assert last["val_mask_acc"] > first["val_mask_acc"] + 0.15


def test_masking_follows_the_bert_recipe(shakespeare_char):
    from bigmodel.data.tokenizer import MASK, load_tokenizer
    from bigmodel.train.objectives import MaskedLM

    tok = load_tokenizer(shakespeare_char)
    mlm = MaskedLM(tok, tok.get_vocab_size(), seed=0)
    tokens = torch.randint(60, (200, 100))
    inputs, targets = mlm(tokens)
    inputs = inputs["idx"]
    chosen = targets != -1
    assert 0.14 < chosen.float().mean() < 0.16
    assert torch.equal(targets[chosen], tokens[chosen])
    masked = inputs[chosen] == tok.token_to_id(MASK)
    kept = inputs[chosen] == tokens[chosen]
    assert 0.77 < masked.float().mean() < 0.83 and 0.08 < kept.float().mean() < 0.13
    assert torch.equal(inputs[~chosen], tokens[~chosen])


def test_resuming_with_another_shape_is_one_line(shakespeare_char, tmp_path):
    run, short = tmp_path / "run", {"eval_interval": 2, "save_interval": 2, "eval_iters": 1}
    first = subprocess.run(_bigmodel(_pretrain_cmd(shakespeare_char, run, max_iters=4, **short)),
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    wider = subprocess.run(_bigmodel([*_pretrain_cmd(shakespeare_char, run, max_iters=8, n_embd=96, **short),
                                      "--resume"]), capture_output=True, text=True)
    lines = wider.stderr.strip().splitlines()
    assert wider.returncode == 1 and "Traceback" not in wider.stderr, wider.stderr
    assert "does not fit the model this run builds" in lines[-1] and "size mismatch" in lines[-1]


def test_pretrain_init_continues_a_checkpoint_and_refuses_another_tokenizers_corpus(trained_run, shakespeare_char,
                                                                                    tmp_path):
    """--init starts from the checkpoint's weights (its first evaluation is the trained model's, far below a new
    model's), with a shorter context if asked; a corpus prepared with another tokenizer is refused in one line."""
    start = metric_rows(trained_run)[-1]["val_loss"]
    args = ["pretrain", "--init", str(trained_run), "--data", str(shakespeare_char), "--max-iters", "20",
            "--eval-interval", "20", "--eval-iters", "5", "--batch-size", "8", "--lr", "1e-3", "--block-size", "16"]
    done = run_cli(*args, "--out", str(tmp_path / "continued"))
    assert done.returncode == 0, done.stderr
    rows = metric_rows(tmp_path / "continued")
    uniform = math.log(load_meta(shakespeare_char)["vocab_size"])
    assert abs(rows[0]["val_loss"] - start) < 0.25 and rows[0]["val_loss"] < 0.8 * uniform, (rows[0], start)
    model, _, _ = load_checkpoint(tmp_path / "continued")
    assert model.config.block_size == 16 and model.config.n_embd == 32
    refused = error_line(run_cli(*args, "--n-layer", "3", "--out", str(tmp_path / "x")))
    assert "only --block-size and --dropout" in refused
    other = tmp_path / "bpe"
    (tmp_path / "text.txt").write_text(SHAKESPEARE.read_text(encoding="utf-8")[:50_000], encoding="utf-8")
    assert run_cli("prepare", "--input", str(tmp_path / "text.txt"), "--out", str(other), "--tokenizer", "bpe",
                   "--vocab-size", "300").returncode == 0
    line = error_line(run_cli(*args[:3], "--data", str(other), *args[5:], "--out", str(tmp_path / "y")))
    assert "was prepared with another tokenizer than --init" in line


def test_a_nan_evaluation_is_never_kept_as_the_best():
    """A first evaluation that is not a number must not become `best/`, nor block the first real one."""
    from bigmodel.train.optim import KeepBest

    best = KeepBest(minimize=True)
    assert not best.improved(float("nan"))
    assert best.improved(2.0) and not best.improved(float("nan")) and not best.improved(3.0) and best.improved(1.0)
    assert best.best == 1.0 and best.stale == 0
