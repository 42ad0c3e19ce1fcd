"""Images through the same Transformer: scikit-learn's digits as PNG folders, a ViT trained from
scratch, evaluate/predict/explain on image files, /v1/classify with base64 images, and one-line
errors for bad images."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
import yaml

from .conftest import error_line, metric_rows, run_cli
from .test_serve import http, start_server

VIT = {"frontend": "patches", "image_size": 8, "patch_size": 2, "channels": 1, "block_size": 17, "n_layer": 2,
       "n_head": 4, "n_embd": 64, "causal": False}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from bigmodel.data.datasets import build

    out = tmp_path_factory.mktemp("digits")
    assert build("digits", out) == {"train": 1293, "val": 144, "test": 360}
    return out


@pytest.fixture(scope="module")
def vit_run(digits, tmp_path_factory):
    """A small ViT trained for a few epochs through the CLI, from a recipe with a `model:` section."""
    out = tmp_path_factory.mktemp("vit")
    recipe = out / "vit.yaml"
    recipe.write_text(yaml.safe_dump({"model": VIT, "finetune": {
        "task": "classify", "train": str(digits / "train"), "val": str(digits / "val"), "out": str(out / "run"),
        "epochs": 6, "lr": 2e-3, "batch_size": 32, "patience": 10}}))
    done = run_cli("finetune", "--config", str(recipe))
    assert done.returncode == 0, done.stderr[-2000:]
    return out / "run"


def test_a_vit_learns_digits_from_scratch(vit_run):
    rows = metric_rows(vit_run)[1:]  # after step 0, the starting point, which trained on nothing
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] / 3
    assert max(r["accuracy"] for r in rows) > 0.85  # ten classes: chance is 0.1
    assert not (vit_run / "best" / "tokenizer.json").exists()  # an image model has no tokenizer
    assert json.loads((vit_run / "best" / "head.json").read_text())["pooling"] == "first"  # [CLS]


def test_evaluate_and_predict_read_image_folders_and_files(vit_run, digits, tmp_path):
    done = run_cli("evaluate", "--task", "classify", "--ckpt", str(vit_run), "--data", str(digits / "test"),
                   "--out", str(tmp_path / "eval"))
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert figures["accuracy"] > 0.8 and (tmp_path / "eval" / "confusion.png").stat().st_size > 1000
    table = digits / "test.csv"  # the same images listed as (path relative to the table, label) rows
    table.write_text("text,label\n" + "".join(f"{f.relative_to(digits)},{f.parent.name}\n"
                                              for f in sorted((digits / "test").glob("*/*.png"))))
    listed = run_cli("evaluate", "--task", "classify", "--ckpt", str(vit_run), "--data", str(table),
                     "--out", str(tmp_path / "eval_csv"))
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert json.loads((tmp_path / "eval_csv" / "metrics.json").read_text())["accuracy"] == figures["accuracy"]
    sevens = sorted((digits / "test" / "7").glob("*.png"))[:10]
    one = run_cli("predict", "--ckpt", str(vit_run), "--input", str(sevens[0]))
    assert one.returncode == 0, one.stderr[-2000:]
    record = json.loads(one.stdout)
    assert record["input"] == str(sevens[0]) and sum(record["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    folder = run_cli("predict", "--ckpt", str(vit_run), "--input", str(digits / "test" / "7"))
    labels = [json.loads(line)["label"] for line in folder.stdout.splitlines()]
    assert len(labels) == len(list((digits / "test" / "7").glob("*.png"))) and labels.count("7") > 0.7 * len(labels)


def test_attention_rollout_over_patches_is_drawn(vit_run, digits, tmp_path):
    from bigmodel.data.inputs import ImageInputs
    from bigmodel.infer.explain_image import patch_rollout
    from bigmodel.model.checkpoint import load_checkpoint

    image = sorted((digits / "test" / "3").glob("*.png"))[0]
    done = run_cli("explain", "--ckpt", str(vit_run), "--input", str(image), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "rollout.png").stat().st_size > 5000 and "rollout" in done.stdout
    model, _, _ = load_checkpoint(vit_run, with_head=True)
    rollout = patch_rollout(model, ImageInputs(model.config).read([image])[0])
    # rows of the rollout are distributions over all 17 positions; the 16 patches hold part of [CLS]'s
    assert rollout.shape == (4, 4) and (rollout >= 0).all() and 0 < rollout.sum() < 1
    check = run_cli("explain", "--ckpt", str(vit_run), "--evaluate", "--data", str(digits / "test" / "3"),
                    "--max-examples", "10", "--out", str(tmp_path / "deletion"))
    assert check.returncode == 0, check.stderr[-2000:]
    report = json.loads((tmp_path / "deletion" / "deletion.json").read_text())
    assert report["images"] == 10 and set(report) >= {"rollout@25", "random@25"}


def test_padding_and_augmentation_keep_images_whole(digits):
    import random

    from bigmodel.config import ModelConfig
    from bigmodel.data.inputs import ImageInputs

    inputs = ImageInputs(ModelConfig(**VIT), hflip=True)
    image = inputs.read([sorted((digits / "train" / "0").glob("*.png"))[0]])[0]
    assert image.shape == (1, 8, 8) and 0 <= image.min() and image.max() <= 1
    shifted = [inputs.augment(image, random.Random(seed)) for seed in range(20)]
    assert all(s.shape == image.shape for s in shifted) and any(not torch.equal(s, image) for s in shifted)
    x, mask = inputs.batch(shifted[:3], "cpu")
    assert x.shape == (3, 1, 8, 8) and mask.shape == (3, 17) and mask.all()


def test_bad_images_get_one_line_and_exit_1(vit_run, tmp_path):
    from PIL import Image

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8)).save(cmyk)
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad, words in ((corrupt, "not an image"), (cmyk, "mode CMYK"), (empty, "no .png")):
        done = run_cli("predict", "--ckpt", str(vit_run), "--input", str(bad))
        line = error_line(done)
        assert str(bad) in line and words in line, done.stderr
    training = run_cli("finetune", "--init", str(vit_run / "best"), "--train", str(empty), "--val", str(empty),
                       "--out", str(tmp_path / "x"))
    assert training.returncode == 1 and "class sub-folders" in training.stderr


def test_classify_route_takes_base64_images(vit_run, digits):
    from bigmodel.infer.classify import predict_inputs
    from bigmodel.model.checkpoint import load_checkpoint

    proc, base = start_server(vit_run, "--dtype", "fp32")  # compared below with an fp32 model in this process
    try:
        files = [sorted((digits / "test" / d).glob("*.png"))[0] for d in ("0", "6")]
        encoded = [base64.b64encode(f.read_bytes()).decode() for f in files]
        status, body = http(f"{base}/v1/classify", {"input": [encoded[0], "data:image/png;base64," + encoded[1]]})
        assert status == 200, body
        rows = json.loads(body)["data"]
        assert len(rows) == 2 and all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)
        model, _, _ = load_checkpoint(vit_run, with_head=True)
        local = predict_inputs(model, None, files).softmax(-1).numpy()  # what the files give without a server
        served = np.array([list(r["probabilities"].values()) for r in rows])
        assert np.allclose(served, local, atol=1e-5)
        assert [r["label"] for r in rows] == [model.head_config.labels[i] for i in local.argmax(-1)]
        status, body = http(f"{base}/v1/classify", {"input": "not base64!"})
        assert status == 400 and "base64" in json.loads(body)["error"]["message"]
        status, body = http(f"{base}/v1/classify", {"input": base64.b64encode(b"GIF89a broken").decode()})
        assert status == 400 and "not an image" in json.loads(body)["error"]["message"]
        status, body = http(f"{base}/v1/embeddings", {"input": "hello"})
        assert status == 400 and "/v1/classify" in json.loads(body)["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
