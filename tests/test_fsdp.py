"""FSDP2 under torchrun (2 processes, gloo on the CPU): the same losses as DDP, a gathered plain
checkpoint, and sharded weights and optimizer state that resume in one process."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from bigmodel.model.checkpoint import load_trainer_state

from .conftest import assert_same_curves, metric_rows, run_cli, torchrun_cli

TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
        "--eval-interval", "20", "--eval-iters", "2", "--warmup-iters", "5", "--lr-decay-iters", "60", "--lr", "3e-3"]


@pytest.fixture(scope="module")
def runs(shakespeare_char, tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    for strategy in ("ddp", "fsdp"):
        done = torchrun_cli("pretrain", "--data", str(shakespeare_char), "--out", str(root / strategy),
                            "--max-iters", "40", "--strategy", strategy, *TINY)
        assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_fsdp_losses_equal_ddp_losses(runs):
    assert_same_curves(metric_rows(runs / "ddp"), metric_rows(runs / "fsdp"), "iter", rel=1e-5)
    shards = runs / "fsdp" / "last" / "shards"
    assert sorted(p.name for p in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one per process
    plain, reference = load_file(runs / "fsdp" / "last" / "model.safetensors"), load_file(
        runs / "ddp" / "last" / "model.safetensors")
    assert plain.keys() == reference.keys()  # gathered into the same plain checkpoint DDP writes
    for name, tensor in plain.items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-3, atol=1e-3)  # Adam amplifies rounding near 0


def test_a_two_process_sharded_checkpoint_resumes_in_one_process(runs, shakespeare_char):
    from bigmodel.train.trainer import Trainer, layered_configs

    recipe = {"train": {"data": str(shakespeare_char), "out": str(runs / "fsdp"), "resume": True, "max_iters": 60,
                        "batch_size": 8, "eval_interval": 20, "eval_iters": 2, "warmup_iters": 5,
                        "lr_decay_iters": 60, "lr": 3e-3},
              "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32}}
    trainer = Trainer(*layered_configs(recipe))  # one process: the shards are resharded onto it
    assert trainer.start_step == 40
    saved = load_file(runs / "fsdp" / "last" / "model.safetensors")
    for name, tensor in trainer.raw_model.state_dict().items():
        if name in saved:
            torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)
    ddp_moments = load_trainer_state(runs / "ddp" / "last")["optimizer"]["state"]
    moments = trainer.optimizer.state_dict()["state"]
    assert moments.keys() == ddp_moments.keys()
    for i, state in moments.items():  # Adam's moments came back (DDP kept the same ones whole)
        assert int(state["step"]) == int(ddp_moments[i]["step"]) == 40
        torch.testing.assert_close(state["exp_avg_sq"], ddp_moments[i]["exp_avg_sq"], rtol=1e-2, atol=1e-8)

    done = run_cli("pretrain", "--data", str(shakespeare_char), "--out", str(runs / "fsdp"), "--resume",
                   "--max-iters", "60")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = metric_rows(runs / "fsdp")
    assert [int(r["iter"]) for r in rows] == [0, 20, 40, 60]
    assert rows[-1]["val_loss"] < rows[-2]["val_loss"]
