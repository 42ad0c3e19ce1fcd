"""Sealed (AES-GCM) checkpoints and SHA-256 manifests, through the real commands that write and read them."""

import base64
import json
import os
import shutil

import pytest
import torch

from bigmodel.config import FinetuneConfig, TrainConfig
from bigmodel.data.batches import load_meta
from bigmodel.model.checkpoint import MANIFEST, WEIGHTS, Storage, load_checkpoint, save_checkpoint
from bigmodel.model.sealed import MAGIC, Key
from bigmodel.train.finetune import finetune
from bigmodel.train.trainer import pretrain

from .conftest import metric_rows, run_cli, tiny_model
from .test_finetune import synthetic, write_rows
from .test_serve import http, start_server

os.environ["SEALED_TEST_KEY"] = base64.b64encode(bytes(range(32))).decode()
os.environ["SEALED_OTHER_KEY"] = base64.b64encode(bytes(range(1, 33))).decode()
os.environ["SEALED_PASSPHRASE"] = "correct horse battery staple"
KEY = ["--encrypt-key-env", "SEALED_TEST_KEY"]


@pytest.fixture(scope="module")
def sealed(trained_run, tmp_path_factory):
    """The trained test model saved again, sealed."""
    model, tok, _ = load_checkpoint(trained_run)
    folder = tmp_path_factory.mktemp("sealed") / "ckpt"
    save_checkpoint(folder, model, tok, {"note": "sealed copy"}, storage=Storage(Key.from_env("SEALED_TEST_KEY")))
    return folder


def greedy(ckpt, *flags):
    return run_cli("generate", "--ckpt", str(ckpt), "--prompt", "ROMEO:", "--greedy", "--max-new-tokens", "30", *flags)


def test_a_sealed_checkpoint_holds_no_plaintext_and_loads_the_same_model(trained_run, sealed):
    for path in sealed.iterdir():
        if path.name != MANIFEST:
            data = path.read_bytes()
            assert data.startswith(MAGIC), path
            assert b'"n_layer"' not in data and b'"vocab"' not in data and b"ROMEO" not in data
    plain, _, _ = load_checkpoint(trained_run)
    opened, _, _ = load_checkpoint(sealed, storage=Storage(Key.from_env("SEALED_TEST_KEY")))
    for (name, a), b in zip(plain.state_dict().items(), opened.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    expected, result = greedy(trained_run), greedy(sealed, *KEY)
    assert result.returncode == 0 and result.stdout == expected.stdout, result.stderr


def damage_byte(folder):
    data = bytearray((folder / WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 1
    (folder / WEIGHTS).write_bytes(data)


def truncate(folder):
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[:-100])


def swap(folder):
    a, b = folder / "tokenizer.json", folder / "model.json"
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)


@pytest.mark.parametrize("change,flags,fragment", [
    (None, [], "model.json: sealed (AES-GCM); pass --encrypt-key-env"),
    (None, ["--encrypt-key-env", "SEALED_OTHER_KEY"], "model.json: wrong key in SEALED_OTHER_KEY"),
    (None, ["--encrypt-key-env", "SEALED_UNSET"], "--encrypt-key-env SEALED_UNSET: that environment variable is"),
    (damage_byte, KEY, "model.safetensors: altered (chunk 0 fails its AES-GCM tag)"),
    (truncate, KEY, "model.safetensors: "),
    (swap, KEY, "model.json: sealed as 'tokenizer.json', not 'model.json'"),
], ids=["no-key", "wrong-key", "unset-variable", "altered", "truncated", "swapped"])
def test_a_damaged_or_locked_checkpoint_is_refused_in_one_line(sealed, tmp_path, change, flags, fragment):
    folder = tmp_path / "copy"
    shutil.copytree(sealed, folder)
    if change:
        change(folder)
    result = greedy(folder, *flags)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert fragment in line, line
    if change is truncate:
        assert "truncated or extended" in line


def test_passphrases_are_stretched_with_a_salt_per_file(trained_run, tmp_path):
    model, tok, _ = load_checkpoint(trained_run)
    storage = Storage(Key.from_env("SEALED_PASSPHRASE"))
    save_checkpoint(tmp_path / "p", model, tok, {}, storage=storage)
    headers = []
    for name in ("model.json", WEIGHTS):
        data = (tmp_path / "p" / name).read_bytes()
        size = int.from_bytes(data[len(MAGIC):len(MAGIC) + 4], "big")
        headers.append(json.loads(data[len(MAGIC) + 4:len(MAGIC) + 4 + size]))
    assert all(h["kdf"] == "scrypt" and len(h["salt"]) == 32 for h in headers)
    assert headers[0]["salt"] != headers[1]["salt"]
    assert greedy(tmp_path / "p", "--encrypt-key-env", "SEALED_PASSPHRASE").stdout == greedy(trained_run).stdout


def test_plain_checkpoints_are_checked_against_their_manifest(trained_run, tmp_path):
    folder = tmp_path / "plain"
    shutil.copytree(trained_run / "best", folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert not manifest["sealed"] and set(manifest["sha256"]) >= {WEIGHTS, "model.json", "tokenizer.json"}
    damage_byte(folder)
    result = greedy(folder)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert f"{WEIGHTS}: SHA-256" in line and "differs from manifest.json" in line and "--no-verify" in line
    assert greedy(folder, "--no-verify").returncode == 0
    (folder / MANIFEST).unlink()
    unchecked = greedy(folder)
    assert unchecked.returncode == 0 and unchecked.stderr.count(f"has no {MANIFEST}") == 1, unchecked.stderr
    assert "load unchecked" in unchecked.stderr


def test_training_reads_and_writes_sealed_checkpoints(shakespeare_char, sealed, tmp_path):
    """Pretraining seals best/ and last/ and resumes from them; fine-tuning starts from a sealed model."""
    model = tiny_model(load_meta(shakespeare_char)["vocab_size"])
    cfg = TrainConfig(data=str(shakespeare_char), out=str(tmp_path / "pre"), max_iters=10, batch_size=8,
                      eval_interval=5, eval_iters=1, encrypt_key_env="SEALED_TEST_KEY")
    pretrain(model, cfg, {"model": model, "train": cfg})
    assert (tmp_path / "pre" / "last" / "trainer_state.pt").read_bytes().startswith(MAGIC)
    cfg.max_iters, cfg.resume = 15, True
    pretrain(model, cfg, {"model": model, "train": cfg})
    assert [int(r["iter"]) for r in metric_rows(tmp_path / "pre")] == [0, 5, 10, 15]
    train = write_rows(tmp_path / "train.csv", synthetic(40, 0))
    finetune(FinetuneConfig(init=str(sealed), train=str(train), val=str(train), out=str(tmp_path / "ft"), epochs=1,
                            batch_size=20, encrypt_key_env="SEALED_TEST_KEY"))
    assert (tmp_path / "ft" / "best" / "head.json").read_bytes().startswith(MAGIC)
    (tmp_path / "texts.txt").write_text("first\nsecond\nthird\n")
    result = run_cli("predict", "--ckpt", str(tmp_path / "ft"), "--input", str(tmp_path / "texts.txt"), *KEY)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 3, result.stderr


def test_the_server_loads_a_sealed_checkpoint(trained_run, sealed):
    proc, base = start_server(sealed, *KEY)
    try:
        status, body = http(f"{base}/v1/completions", {"model": "x", "prompt": "ROMEO:", "max_tokens": 30,
                                                       "temperature": 0})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert status == 200, body
    assert "ROMEO:" + json.loads(body)["choices"][0]["text"] in greedy(trained_run).stdout
