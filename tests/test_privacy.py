"""DP-SGD through Opacus on a real fine-tuning run, and the membership-inference audit."""

import pytest
import torch
import yaml

from bigmodel.config import FinetuneConfig, TrainConfig
from bigmodel.data.batches import load_meta
from bigmodel.model.checkpoint import load_checkpoint
from bigmodel.model.heads import HeadConfig, SequenceModel
from bigmodel.train import privacy
from bigmodel.train.finetune import finetune
from bigmodel.train.optim import make_optimizer
from bigmodel.train.trainer import pretrain

from .conftest import metric_rows, run_cli, tiny_model
from .test_finetune import synthetic, write_rows


def test_a_private_run_reports_the_epsilon_it_spends(trained_run, tmp_path):
    train = write_rows(tmp_path / "train.csv", synthetic(300, 0))
    val = write_rows(tmp_path / "val.csv", synthetic(40, 1))
    finetune(FinetuneConfig(init=str(trained_run), train=str(train), val=str(val), out=str(tmp_path / "dp"), epochs=2,
                            lr=3e-3, batch_size=30, eval_every=5, patience=0, dp_epsilon=4.0, dp_delta=1e-4))
    start, *rows = metric_rows(tmp_path / "dp")
    spent = [r["epsilon"] for r in rows]
    assert start["epsilon"] == 0 and len(spent) == 4  # nothing spent before the first step
    assert spent == sorted(spent) and 0 < spent[0] < spent[-1] <= 4.0 + 1e-6
    assert spent[-1] > 3.5  # the noise was calibrated to reach the target at the planned number of steps
    record = yaml.safe_load((tmp_path / "dp" / "last" / "config.yaml").read_text())["privacy"]
    assert record["epsilon"] == pytest.approx(spent[-1]) and record["delta"] == 1e-4 and record["noise_multiplier"] > 0
    before, _, _ = load_checkpoint(trained_run)
    after, _, _ = load_checkpoint(tmp_path / "dp" / "last")  # best/ may be the starting model: DP's noise is loud
    assert torch.equal(before.tok_emb.weight, after.tok_emb.weight)  # tied embeddings stay frozen under DP
    assert not torch.equal(before.blocks[0].attn.qkv.weight, after.blocks[0].attn.qkv.weight)


def test_each_example_gradient_is_clipped_before_noise(trained_run):
    """Opacus' per-sample gradients exist for every trainable matrix, and their clipped sum is bounded by n·C."""
    model = SequenceModel(load_checkpoint(trained_run)[0], HeadConfig(labels=["a", "b"], pooling="last")).train()
    privacy.freeze_embeddings(model)
    cfg = FinetuneConfig(batch_size=8, dp_epsilon=8.0, dp_max_grad_norm=0.01, lr=1e-3)
    module, optimizer, _, accountant = privacy.make_private(model, make_optimizer(model, cfg, torch.device("cpu")),
                                                             64, 8, 10, cfg)
    x, mask = torch.randint(60, (8, 12)), torch.ones(8, 12, dtype=torch.bool)
    torch.nn.functional.cross_entropy(module(x, mask), torch.randint(2, (8,))).backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad_sample is not None and p.grad_sample.shape == (8, *p.shape) for p in trainable)
    norms = torch.stack([p.grad_sample.reshape(8, -1).norm(dim=1) for p in trainable], dim=1).norm(dim=1)
    assert float(norms.min()) > 0.01  # every example's gradient is above the bound: all get clipped
    optimizer.clip_and_accumulate()
    clipped = torch.cat([p.summed_grad.flatten() for p in trainable]).norm()
    assert float(clipped) <= 8 * 0.01 + 1e-6 < float(norms.sum())
    assert accountant.noise_multiplier > 0


@pytest.mark.parametrize("flags,fragment", [
    (["--dp-epsilon", "0"], "--dp-epsilon must be positive"),
    (["--dp-epsilon", "8", "--batch-size", "500"], "exceeds the 40 training examples"),
    (["--dp-epsilon", "8", "--dp-delta", "2"], "--dp-delta must be between 0 and 1"),
    (["--dp-epsilon", "8", "--grad-accum", "2"], "does not support --grad-accum above 1"),
])
def test_bad_privacy_settings_are_one_line(trained_run, tmp_path, flags, fragment):
    train = write_rows(tmp_path / "train.csv", synthetic(40, 0))
    result = run_cli("finetune", "--init", str(trained_run), "--train", str(train), "--val", str(train), "--out",
                     str(tmp_path / "o"), *flags)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert fragment in result.stderr.strip().splitlines()[-1]


def test_private_pretraining_learns_every_parameter_and_spends_its_epsilon(shakespeare_char, tmp_path):
    model = tiny_model(load_meta(shakespeare_char)["vocab_size"], tie_embeddings=False)
    cfg = TrainConfig(data=str(shakespeare_char), out=str(tmp_path), max_iters=40, batch_size=64, lr=3e-3,
                      warmup_iters=5, eval_interval=20, eval_iters=2, dp_epsilon=3.0)
    pretrain(model, cfg, {"model": model, "train": cfg})
    first, middle, last = metric_rows(tmp_path)
    assert last["val_loss"] < first["val_loss"] - 0.5
    assert first["epsilon"] == 0 < middle["epsilon"] < last["epsilon"] <= 3.0 + 1e-6 and last["epsilon"] > 2.7
    assert yaml.safe_load((tmp_path / "last" / "config.yaml").read_text())["privacy"]["epsilon"] == last["epsilon"]
    trained = load_checkpoint(tmp_path)[0]
    torch.manual_seed(cfg.seed)
    untrained = type(trained)(trained.config)
    for (name, before), after in zip(untrained.named_parameters(), trained.parameters(), strict=True):
        assert not torch.equal(before, after), f"{name} did not train"  # embeddings and positions too


@pytest.mark.parametrize("flags,fragment", [
    ([], "does not support tied embeddings (pass --no-tie-embeddings)"),
    (["--no-tie-embeddings", "--compile"], "does not support --compile"),
    (["--no-tie-embeddings", "--batch-size", "100000"], "exceeds the"),
])
def test_bad_private_pretraining_is_one_line(shakespeare_char, tmp_path, flags, fragment):
    result = run_cli("pretrain", "--data", str(shakespeare_char), "--out", str(tmp_path), "--n-layer", "1",
                     "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--max-iters", "2",
                     "--dp-epsilon", "8", *flags)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert fragment in result.stderr.strip().splitlines()[-1]


def random_labels(n, seed):
    """Texts whose labels nothing predicts: a model can only get them right by memorizing them."""
    import random

    rng = random.Random(seed)
    return [("".join(rng.choice("abcdefgh ") for _ in range(12)), rng.choice(["yes", "no"])) for _ in range(n)]


@pytest.mark.parametrize("private", [False, True])
def test_the_audit_sees_memorization_and_dp_hides_it(trained_run, tmp_path, private):
    members = write_rows(tmp_path / "members.csv", random_labels(64, 0))
    others = write_rows(tmp_path / "others.csv", random_labels(64, 1))
    flags = ["--dp-epsilon", "1", "--batch-size", "16"] if private else ["--batch-size", "16"]
    trained = run_cli("finetune", "--init", str(trained_run), "--train", str(members), "--val", str(members), "--out",
                      str(tmp_path / "ft"), "--epochs", "80", "--lr", "3e-3", "--patience", "0", "--head-dropout", "0",
                      *flags)
    assert trained.returncode == 0, trained.stderr
    result = run_cli("audit", "--ckpt", str(tmp_path / "ft"), "--train", str(members), "--holdout", str(others),
                     "--out", str(tmp_path / "audit"))
    assert result.returncode == 0, result.stderr
    report = yaml.safe_load((tmp_path / "audit" / "audit.json").read_text())
    assert report["members"] == report["non_members"] == 64
    if private:
        assert abs(report["auc"] - 0.5) < 0.15
        assert "differential privacy: (ε = " in trained.stdout
    else:
        assert report["auc"] > 0.7 and report["member_loss"] < report["non_member_loss"]
    assert (tmp_path / "audit" / "roc.png").stat().st_size > 10_000
