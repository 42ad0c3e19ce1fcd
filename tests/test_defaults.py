"""The first run learns: each (task, method) fine-tuned with its defaults alone (no --lr, no --epochs) beats the
model it started from on held-out data, by a stated margin. Real models and real data: MiniLM on SST-2, and
SmolLM2-135M-Instruct on a rule it cannot follow out of the box (one exact answer per prompt). SmolLM2's chat
LoRA and the DPO LoRA after it are the chat tutorial's own commands, held to the same margins in
tests/test_docs.py, so the page and the test are one run."""

import csv
import json
import random

import pytest

from .conftest import SHARED, metric_rows, run_cli, shared_file
from .test_finetune import write_rows


def ok(*args):
    done = run_cli(*args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def sst2(tmp_path):
    """512 training sentences, and two held-out sets from SST-2's dev split: val (keep-best) and test."""
    train = list(csv.DictReader(shared_file(SHARED / "sst2" / "train.tsv").open(encoding="utf-8"), delimiter="\t"))
    dev = list(csv.DictReader(shared_file(SHARED / "sst2" / "dev.tsv").open(encoding="utf-8"), delimiter="\t"))
    random.Random(0).shuffle(train)
    return [write_rows(tmp_path / f"{name}.csv", [(r["sentence"], r["label"]) for r in rows])
            for name, rows in (("train", train[:512]), ("val", dev[:200]), ("test", dev[200:500]))]


def accuracy(ckpt, data, out):
    ok("evaluate", "--task", "classify", "--ckpt", str(ckpt), "--data", str(data), "--out", str(out))
    return json.loads((out / "metrics.json").read_text())["accuracy"]


@pytest.mark.parametrize("method,margin", [("full", 0.2), ("lora", 0.15)])
def test_minilm_classifies_sst2_with_default_settings(tmp_path, method, margin):
    """The starting model (MiniLM with a new head) is a coin toss; its defaults take either method well past it."""
    train, val, test = sst2(tmp_path)
    done = ok("finetune", "--init", "minilm", "--train", str(train), "--val", str(val), "--method", method,
              "--out", str(tmp_path / "run"))
    start = metric_rows(tmp_path / "run")[0]
    assert start["step"] == 0 and "before training: accuracy" in done.stdout and "not learning" not in done.stdout
    assert accuracy(tmp_path / "run", test, tmp_path / "test") >= start["accuracy"] + margin


@pytest.fixture(scope="module")
def rule_data(tmp_path_factory):
    """`bigmodel dataset rule`: "Tag the word W." answered [W] in capitals; the test words never appear in training."""
    folder = tmp_path_factory.mktemp("rule")
    ok("dataset", "rule", "--out", str(folder))
    return folder


def test_smollm2_seq2seq_lora_learns_the_rule_with_default_settings(rule_data, tmp_path):
    ok("finetune", "--init", "smollm2", "--task", "seq2seq", "--method", "lora",
       "--train", str(rule_data / "train.csv"), "--val", str(rule_data / "val.csv"), "--out", str(tmp_path / "run"))
    scores = []
    for name, ckpt in (("before", "smollm2"), ("after", tmp_path / "run")):
        ok("evaluate", "--task", "seq2seq", "--ckpt", str(ckpt), "--data", str(rule_data / "test.csv"),
           "--max-new-tokens", "8", "--out", str(tmp_path / name))
        scores.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    # bare "word <|endoftext|> [WORD]" rows are harder than the chat form: the brackets come, the spelling of
    # unseen words mostly does not yet (measured: chrF 1.0 -> 31.7, CER 231 -> 45 where --dtype auto trains in
    # bf16 (AVX-512); chrF 1.0 -> 10.7, CER 231 -> 76 in fp32 on an imitated AVX2 CPU)
    assert scores[1]["chrf"] >= scores[0]["chrf"] + 5 and scores[1]["cer"] <= scores[0]["cer"] - 100, scores


def test_minilm_qa_full_finds_answers_with_default_settings(tmp_path):
    """600 training questions; the first 300 or so validation questions, evaluated before and after each epoch."""
    ok("dataset", "qa", "--out", str(tmp_path / "qa"))
    val = json.loads((tmp_path / "qa" / "val.json").read_text())
    paragraphs, kept = [], 0
    for paragraph in (p for article in val["data"] for p in article["paragraphs"]):
        paragraphs.append(paragraph)
        kept += len(paragraph["qas"])
        if kept >= 300:
            break
    (tmp_path / "val300.json").write_text(json.dumps({"data": [{"title": "val", "paragraphs": paragraphs}]}))
    ok("finetune", "--init", "minilm", "--task", "qa", "--train", str(tmp_path / "qa" / "train.json"),
       "--val", str(tmp_path / "val300.json"), "--max-train", "600", "--out", str(tmp_path / "run"))
    rows = metric_rows(tmp_path / "run")
    assert rows[0]["step"] == 0 and max(r["f1"] for r in rows[1:]) >= rows[0]["f1"] + 20, rows
