"""Fine-tuning, classifier evaluation and prediction, through the command line."""

import csv
import json
import math
import random
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from bigmodel.config import FinetuneConfig
from bigmodel.errors import BigModelError
from bigmodel.model.checkpoint import load_checkpoint
from bigmodel.train.finetune import finetune

from .conftest import assert_same_curves, kill_then_resume, metric_rows, run_cli, torchrun_cli
from .test_train import _bigmodel


def write_rows(path, rows, header=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def classifier_from(trained_run, rows, out, epochs):
    """The char-level decoder of `trained_run` fine-tuned on `rows` (validated on them too), in `out`/ft."""
    train = write_rows(out / "train.csv", rows)
    finetune(FinetuneConfig(init=str(trained_run), train=str(train), val=str(train), out=str(out / "ft"),
                            epochs=epochs, lr=3e-3, batch_size=16, patience=epochs))
    return out / "ft"


def synthetic(n, seed):
    """Label = which of two words the text holds, somewhere among random letters."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["good", "evil"])
        noise = "".join(rng.choice("xyz ") for _ in range(rng.randint(3, 12)))
        rows.append((f"{noise[:4]}{label}{noise[4:]}", label))
    return rows


def test_decoder_checkpoint_fine_tunes_to_perfect_train_accuracy(trained_run, tmp_path):
    train = write_rows(tmp_path / "train.csv", synthetic(160, 0))
    val = write_rows(tmp_path / "val.csv", synthetic(40, 1))
    best = finetune(FinetuneConfig(init=str(trained_run), train=str(train), val=str(val), out=str(tmp_path / "ft"),
                                   epochs=8, lr=3e-3, batch_size=16, patience=8))
    assert best["accuracy"] == 1.0
    result = run_cli("evaluate", "--task", "classify", "--ckpt", str(tmp_path / "ft"), "--data", str(train),
                     "--out", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr
    figures = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert figures["accuracy"] == 1.0 and figures["report"]["good"]["f1-score"] == 1.0
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 5_000
    model, _, _ = load_checkpoint(tmp_path / "ft", with_head=True)
    assert model.head_config.labels == ["evil", "good"] and model.head_config.pooling == "last"

    lines = tmp_path / "lines.txt"
    lines.write_text("xx good zz\nyevil y\n", encoding="utf-8")
    predicted = run_cli("predict", "--ckpt", str(tmp_path / "ft"), "--input", str(lines))
    assert predicted.returncode == 0, predicted.stderr
    records = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [r["label"] for r in records] == ["good", "evil"]
    assert sum(records[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_regression_learns_a_number(trained_run, tmp_path):
    rng = random.Random(0)
    values = {"a": 0.0, "m": 0.5, "z": 1.0}
    rows = [(ch * rng.randint(2, 6), str(values[ch])) for ch in (rng.choice("amz") for _ in range(120))]
    train = write_rows(tmp_path / "t.csv", rows)
    best = finetune(FinetuneConfig(init=str(trained_run), task="regress", train=str(train), val=str(train),
                                   out=str(tmp_path / "r"), epochs=10, lr=3e-3, batch_size=16, patience=10))
    assert best["mse"] < 0.02  # the labels' own variance is about 0.17


def test_a_diverging_fine_tune_stops_before_it_overwrites_last(trained_run, tmp_path):
    """The first step's evaluation saves last/; the steps after it blow the weights up, and the run stops
    with one line instead of saving NaN weights over the good checkpoint."""
    rows = [("a" * n, str(n)) for n in range(2, 40)]
    train = write_rows(tmp_path / "t.csv", rows)
    cfg = FinetuneConfig(init=str(trained_run), task="regress", train=str(train), val=str(train),
                         out=str(tmp_path / "r"), epochs=20, lr=1e8, warmup=0.0, grad_clip=0.0, batch_size=4,
                         eval_every=1, patience=1000)
    with pytest.raises(BigModelError, match=r"loss became (nan|inf) at step \d+; stopped without saving"):
        finetune(cfg)
    weights = load_file(tmp_path / "r" / "last" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def _one_line_error(result, fragment):
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert fragment in result.stderr.strip().splitlines()[-1], result.stderr


@pytest.mark.parametrize("case,fragment", [
    ("missing_column", "no column 'label'"),
    ("empty", "holds no examples"),
    ("one_label", "only one label"),
    ("unseen_label", "validation labels not in training: 'maybe'"),
    ("non_utf8", "line 3 is not valid UTF-8"),
])
def test_bad_fine_tuning_input_is_one_clear_line(trained_run, tmp_path, case, fragment):
    good = write_rows(tmp_path / "good.csv", [("a b", "yes"), ("c d", "no")])
    train, val = good, good
    if case == "missing_column":
        train = write_rows(tmp_path / "x.csv", [("a", "yes")], header=("text", "sentiment"))
    elif case == "empty":
        train = tmp_path / "empty.csv"
        train.write_text("text,label\n", encoding="utf-8")
    elif case == "one_label":
        train = write_rows(tmp_path / "x.csv", [("a", "yes"), ("b", "yes")])
    elif case == "unseen_label":
        val = write_rows(tmp_path / "v.csv", [("a", "yes"), ("b", "maybe")])
    else:
        train = tmp_path / "bad.csv"
        train.write_bytes(b"text,label\na,yes\n\xff\xfe,no\n")
    result = run_cli("finetune", "--init", str(trained_run), "--train", str(train), "--val", str(val),
                     "--out", str(tmp_path / "o"), "--epochs", "1")
    _one_line_error(result, fragment)


@pytest.mark.parametrize("flags,fragment", [
    (["--lr", "0"], "--lr must be a positive number, not 0.0"),
    (["--lr=-1e-3"], "--lr must be a positive number, not -0.001"),
    (["--lr", "nan"], "--lr must be a positive number, not nan"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--method", "lora", "--lora-r", "64"], "--lora-r 64 is larger than layer blocks.0.attn.qkv allows (32"),
    (["--method", "lora", "--lora-targets", "qkv", "q_proj"], "--lora-targets q_proj: no such layer in this model"),
])
def test_bad_fine_tuning_settings_are_one_clear_line(trained_run, tmp_path, flags, fragment):
    good = write_rows(tmp_path / "good.csv", [("a b", "yes"), ("c d", "no")])
    result = run_cli("finetune", "--init", str(trained_run), "--train", str(good), "--val", str(good),
                     "--out", str(tmp_path / "o"), "--epochs", "1", *flags)
    if "invalid float" in fragment:  # argparse's own usage error: status 2, its usage line then the error
        assert result.returncode == 2 and fragment in result.stderr
        return
    _one_line_error(result, fragment)


def _accuracy_from_cli(ckpt, data, out):
    result = run_cli("evaluate", "--task", "classify", "--ckpt", str(ckpt), "--data", str(data), "--out", str(out),
                     "--json", str(out) + ".json")
    assert result.returncode == 0, result.stderr
    figures = json.loads((out / "metrics.json").read_text())
    assert json.loads(Path(str(out) + ".json").read_text()) == figures  # --json is honoured too
    return figures["accuracy"]


def test_lora_merges_into_a_plain_checkpoint_that_scores_the_same(trained_run, tmp_path):
    train = write_rows(tmp_path / "train.csv", synthetic(160, 0))
    val = write_rows(tmp_path / "val.csv", synthetic(60, 1))
    best = finetune(FinetuneConfig(init=str(trained_run), train=str(train), val=str(val), out=str(tmp_path / "ft"),
                                   method="lora", lora_r=4, epochs=6, lr=1e-2, batch_size=16, patience=6))
    assert best["accuracy"] > 0.7
    assert best["trainable_params"] < 0.2 * best["total_params"]  # adapters and the classifier only
    names = load_file(tmp_path / "ft" / "best" / "model.safetensors").keys()
    assert not any("lora" in n or "base_layer" in n for n in names)
    assert _accuracy_from_cli(tmp_path / "ft", val, tmp_path / "eval") == pytest.approx(best["accuracy"])


def test_freeze_trains_only_the_head_and_the_top_blocks(trained_run, tmp_path):
    train = write_rows(tmp_path / "train.csv", synthetic(80, 0))
    finetune(FinetuneConfig(init=str(trained_run), train=str(train), val=str(train), out=str(tmp_path / "ft"),
                            method="freeze", freeze_layers=1, epochs=2, lr=1e-2, batch_size=16))
    before = load_checkpoint(trained_run)[0].state_dict()
    after = load_checkpoint(tmp_path / "ft", with_head=True)[0].backbone.state_dict()
    assert torch.equal(before["blocks.0.attn.qkv.weight"], after["blocks.0.attn.qkv.weight"])
    assert torch.equal(before["tok_emb.weight"], after["tok_emb.weight"])
    assert not torch.equal(before["blocks.1.attn.qkv.weight"], after["blocks.1.attn.qkv.weight"])


def test_a_fine_tuned_checkpoint_reloads_a_tokenizer_that_cuts_nothing(trained_run, tmp_path):
    """Fine-tuning cuts its inputs to --max-length on a private copy; the saved tokenizer must not."""
    train = write_rows(tmp_path / "train.csv", synthetic(40, 0))
    finetune(FinetuneConfig(init=str(trained_run), train=str(train), val=str(train), out=str(tmp_path / "ft"),
                            epochs=1, max_length=16, batch_size=16))
    stored = json.loads((tmp_path / "ft" / "best" / "tokenizer.json").read_text(encoding="utf-8"))
    assert stored["truncation"] is None and stored["padding"] is None
    _, tok, _ = load_checkpoint(tmp_path / "ft")
    assert len(tok.encode("To be or not to be. " * 15).ids) == 300  # one token per character


def _finetune_cmd(init, train, val, out, **overrides):
    flags = {"epochs": 2, "batch-size": 16, "lr": 3e-3, "eval-every": 25, "patience": 0, "seed": 3}
    flags.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return ["finetune", "--init", str(init), "--train", str(train), "--val", str(val), "--out", str(out),
            *(str(a) for k, v in flags.items() for a in (f"--{k}", v))]


def _tallies(run_dir):
    """Steps, examples and tokens the run's last checkpoint says it trained on (its `compute` section)."""
    compute = yaml.safe_load((run_dir / "last" / "config.yaml").read_text())["compute"]
    return {k: compute[k] for k in ("steps", "examples", "tokens")}


def _figures(run_dir):
    """Each evaluation's figures (step 0's train loss, of nothing trained yet, is NaN: None here, to compare)."""
    return [{k: None if v != v else v for k, v in r.items() if k not in ("examples_per_s", "elapsed_s")}
            for r in metric_rows(run_dir)]


def test_fine_tuning_logs_like_pretraining(trained_run, tmp_path):
    train = write_rows(tmp_path / "train.csv", synthetic(400, 0))
    val = write_rows(tmp_path / "val.csv", synthetic(60, 1))
    best = finetune(FinetuneConfig(init=str(trained_run), train=str(train), val=str(val), out=str(tmp_path / "ft"),
                                   epochs=2, lr=3e-3, batch_size=8, grad_accum=2, eval_every=5, patience=0,
                                   tensorboard=True))
    start, *logged = metric_rows(tmp_path / "ft")
    assert start["step"] == 0 and math.isnan(start["train_loss"])  # the starting model, measured before step 1
    assert [r["step"] for r in logged] == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]  # 25 steps of 16 per epoch
    assert logged[-1]["val_loss"] < logged[0]["val_loss"] < start["val_loss"]
    assert logged[-1]["train_loss"] < logged[0]["train_loss"]
    assert best["accuracy"] == max(r["accuracy"] for r in logged) and logged[-1]["epoch"] == 2
    assert best["start_accuracy"] == start["accuracy"] < best["accuracy"]
    assert all(r["examples_per_s"] > 0 for r in logged)
    assert (tmp_path / "ft" / "loss.png").stat().st_size > 10_000
    assert list((tmp_path / "ft" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "ft" / "last" / "trainer_state.pt").is_file()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_sigkilled_fine_tuning_resumes_to_the_same_figures_and_weights(trained_run, tmp_path, method):
    train = write_rows(tmp_path / "train.csv", synthetic(1600, 0))
    val = write_rows(tmp_path / "val.csv", synthetic(100, 1))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    extra = {"method": method, "lora-r": 4} if method == "lora" else {}
    done = subprocess.run(_bigmodel(_finetune_cmd(trained_run, train, val, whole, **extra)), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    kill_then_resume(_finetune_cmd(trained_run, train, val, killed, **extra), killed)
    assert _figures(killed) == _figures(whole)
    # what the model card reports of the compute is summed across the kill: the same tallies as one whole run
    assert _tallies(killed) == _tallies(whole) and _tallies(whole)["examples"] == 3200  # 2 epochs of 1,600
    assert _tallies(whole)["steps"] == 200 and _tallies(whole)["tokens"] > 3200 * 3
    a, b = load_file(whole / "last" / "model.safetensors"), load_file(killed / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_torchrun_fine_tunes_as_one_process_at_the_same_global_batch(trained_run, tmp_path):
    train = write_rows(tmp_path / "train.csv", synthetic(300, 0))
    val = write_rows(tmp_path / "val.csv", synthetic(60, 1))
    common = {"epochs": 1, "eval-every": 5, "head-dropout": 0, "lr": 1e-3}
    one = subprocess.run(_bigmodel(_finetune_cmd(trained_run, train, val, tmp_path / "one", batch_size=16, **common)),
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    result = torchrun_cli(*_finetune_cmd(trained_run, train, val, tmp_path / "two", batch_size=8, **common))
    assert result.returncode == 0, result.stderr[-2000:]
    single, double = metric_rows(tmp_path / "one"), metric_rows(tmp_path / "two")
    assert [r["step"] for r in single] == [0, 5, 10, 15, 19]
    assert_same_curves(single, double, "step", rel=1e-4)
    assert _tallies(tmp_path / "two") == _tallies(tmp_path / "one")  # both processes' examples are counted
    assert double[-1]["val_loss"] < double[0]["val_loss"]
