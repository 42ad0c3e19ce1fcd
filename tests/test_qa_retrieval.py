"""Extractive QA, zero-shot classification and dense retrieval: metrics, features, training,
and the CLI verbs (MiniLM where a real pretrained encoder is needed)."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest

from .conftest import SHARED, metric_rows, run_cli, shared_file
from .test_finetune import write_rows


def test_squad_scores_follow_the_official_normalisation():
    from bigmodel.evaluate.qa import normalize, squad_scores

    assert normalize("The  Cat, sat!") == "cat sat"
    figures = squad_scores(["the cat", "a dog ran", "nothing"], [["Cat"], ["dog", "the dog ran fast"], ["x"]])
    assert figures["exact_match"] == pytest.approx(100 / 3)  # "a dog ran" matches neither answer exactly
    # the second: the better of F1("dog ran", "dog") = 2/3 and F1("dog ran", "dog ran fast") = 0.8
    assert figures["f1"] == pytest.approx(100 * (1 + 0.8) / 3)


def test_question_features_point_at_their_answers(tmp_path):
    from bigmodel.data.datasets import build
    from bigmodel.data.squad import read_squad
    from bigmodel.infer import qa
    from bigmodel.model.formats import find_pretrained
    from bigmodel.model.hf import read_hf_tokenizer

    build("qa", tmp_path)
    questions = read_squad(tmp_path / "test.json", need_answers=True)[:300]
    tok = read_hf_tokenizer(find_pretrained("minilm"))
    features = qa.features(tok, questions, 256)
    found = [qa.answer_text(q, f, f.start, f.end)[0] for q, f in zip(questions, features, strict=True) if f.start >= 0]
    expected = [q.answers[0] for q, f in zip(questions, features, strict=True) if f.start >= 0]
    assert len(found) > 280 and found == expected


def key_questions(n: int, seed: int) -> dict:
    """Contexts of random words with one "key is WORD"; the question asks for the word."""
    rng = random.Random(seed)
    word = lambda: "".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 5)))  # noqa: E731
    paragraphs = []
    for i in range(n):
        before, after, key = " ".join(word() for _ in range(rng.randint(1, 6))), " ".join(
            word() for _ in range(rng.randint(1, 6))), word()
        context = f"{before} key is {key} {after}"
        paragraphs.append({"context": context, "qas": [{"id": str(i), "question": "what is the key",
                                                        "answers": [{"text": key, "answer_start": len(before) + 8}]}]})
    return {"data": [{"title": "keys", "paragraphs": paragraphs}]}


def test_qa_fine_tuning_finds_answers_and_refuses_training_data_without_them(shakespeare_char, tmp_path):
    (tmp_path / "train.json").write_text(json.dumps(key_questions(400, 0)))
    (tmp_path / "val.json").write_text(json.dumps(key_questions(50, 1)))
    made = run_cli("pretrain", "--data", str(shakespeare_char), "--out", str(tmp_path / "init"), "--max-iters", "0",
                   "--objective", "mlm", "--no-causal", "--n-layer", "2", "--n-head", "4", "--n-embd", "64",
                   "--block-size", "64", "--positions", "rope")
    assert made.returncode == 0, made.stderr
    run = tmp_path / "run"
    tuned = run_cli("finetune", "--task", "qa", "--init", str(tmp_path / "init"), "--train",
                    str(tmp_path / "train.json"), "--val", str(tmp_path / "val.json"), "--out", str(run),
                    "--epochs", "8", "--lr", "3e-3", "--batch-size", "32", "--patience", "20")
    assert tuned.returncode == 0, tuned.stderr
    rows = metric_rows(run)
    assert rows[-1]["f1"] > 65 and rows[-1]["f1"] > rows[0]["f1"] + 30
    scored = run_cli("evaluate", "--task", "qa", "--ckpt", str(run), "--data", str(tmp_path / "val.json"),
                     "--out", str(tmp_path / "eval"))
    assert scored.returncode == 0, scored.stderr
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["exact_match"] > 55
    (tmp_path / "ask.jsonl").write_text(json.dumps({"question": "what is the key", "context": "ab cd key is "
                                                    "hgf bb ac"}) + "\n")
    answered = run_cli("predict", "--ckpt", str(run), "--input", str(tmp_path / "ask.jsonl"))
    assert answered.returncode == 0, answered.stderr
    record = json.loads(answered.stdout)
    assert record["answer"] == "hgf" and (record["start"], record["end"]) == (13, 16)

    unanswered = key_questions(3, 2)
    unanswered["data"][0]["paragraphs"][1]["qas"][0]["answers"] = []
    (tmp_path / "bad.json").write_text(json.dumps(unanswered))
    refused = run_cli("finetune", "--task", "qa", "--init", str(tmp_path / "init"), "--train",
                      str(tmp_path / "bad.json"), "--val", str(tmp_path / "val.json"), "--out", str(tmp_path / "x"))
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "has no answers" in refused.stderr and "paragraphs[1]" in refused.stderr


def sst2_sample(tmp_path, n: int = 200):
    rows = list(csv.DictReader(shared_file(SHARED / "sst2" / "dev.tsv").open(encoding="utf-8"), delimiter="\t"))[:n]
    return write_rows(tmp_path / "sst2.csv", [(r["sentence"], r["label"]) for r in rows])


def test_minilm_classifies_sst2_zero_shot_above_the_majority_class(tmp_path):
    done = run_cli("evaluate", "--task", "zeroshot", "--ckpt", "minilm", "--data", str(sst2_sample(tmp_path)),
                   "--labels", "0=negative,1=positive", "--template", "This review is {}.", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    figures = json.loads((tmp_path / "metrics.json").read_text())
    assert figures["accuracy"] > figures["majority_class_accuracy"] + 0.1


def test_zeroshot_verb_labels_lines_and_refuses_empty_labels(tmp_path):
    (tmp_path / "texts.txt").write_text("The striker scored twice and the team won the cup final.\n"
                                        "Whisk the eggs with sugar, then bake the cake for forty minutes.\n"
                                        "The restaurant chain's profits doubled thanks to its new pizza menu.\n")
    done = run_cli("zeroshot", "--ckpt", "minilm", "--labels", "sports,cooking,finance", "--template",
                   "This text is about {}.", "--input", str(tmp_path / "texts.txt"), "--multi-label")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["labels"] for r in records] == [["sports"], ["cooking"], ["cooking", "finance"]]
    single = run_cli("zeroshot", "--ckpt", "minilm", "--labels", "sports,cooking,finance", "--input",
                     str(tmp_path / "texts.txt"))
    assert [json.loads(line)["label"] for line in single.stdout.splitlines()] == ["sports", "cooking", "cooking"]
    refused = run_cli("zeroshot", "--ckpt", "minilm", "--labels", " , ", "--input", str(tmp_path / "texts.txt"))
    assert refused.returncode == 1 and "--labels" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_index_and_search_find_the_right_document(tmp_path):
    docs = ["Open a file and return a stream.", "Return the square root of x.",
            "Sleep for the given number of seconds.",
            "Parse a JSON document into Python objects.", "Send an HTTP request and read the response."]
    (tmp_path / "docs.txt").write_text("\n".join(docs) + "\n")
    built = run_cli("index", "--ckpt", "minilm", "--input", str(tmp_path / "docs.txt"), "--out", str(tmp_path / "ix"))
    assert built.returncode == 0, built.stderr
    (tmp_path / "queries.txt").write_text("how do I wait a few seconds\nread json text\n")
    found = run_cli("search", "--index", str(tmp_path / "ix"), "--query-file", str(tmp_path / "queries.txt"),
                    "--top-k", "2")
    assert found.returncode == 0, found.stderr
    hits = [json.loads(line)["hits"] for line in found.stdout.splitlines()]
    assert hits[0][0]["id"] == 2 and hits[1][0]["id"] == 3 and hits[0][0]["score"] >= hits[0][1]["score"]


def test_recall_at_k_counts_the_rank_of_each_querys_own_document():
    from bigmodel.evaluate.retrieval import recall_at

    docs = np.eye(4, dtype=np.float32)
    queries = docs.copy()
    queries[1], queries[2] = 0.8 * docs[2] + 0.6 * docs[1], 0.8 * docs[1] + 0.6 * docs[2]  # own document second
    figures = recall_at(queries, docs, ks=(1, 2))
    assert figures["recall_at_1"] == 0.5 and figures["recall_at_2"] == 1.0
    assert figures["mrr_at_10"] == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)


def test_retrieval_fine_tuning_with_in_batch_negatives_raises_recall(shakespeare_char, tmp_path):
    rng = random.Random(0)
    word = lambda: "".join(rng.choice("abcdefgh") for _ in range(4))  # noqa: E731

    def pairs(n: int) -> list[tuple[str, str]]:
        rows = []
        for _ in range(n):
            key = word()
            rows.append((key, " ".join([word(), key[::-1], word()])))  # the document holds the query reversed
        return rows

    train = write_rows(tmp_path / "train.csv", pairs(600), header=("query", "document"))
    val = write_rows(tmp_path / "val.csv", pairs(64), header=("query", "document"))
    made = run_cli("pretrain", "--data", str(shakespeare_char), "--out", str(tmp_path / "init"), "--max-iters", "0",
                   "--objective", "mlm", "--no-causal", "--n-layer", "2", "--n-head", "4", "--n-embd", "64",
                   "--block-size", "32")
    assert made.returncode == 0, made.stderr
    before = run_cli("evaluate", "--task", "retrieval", "--ckpt", str(tmp_path / "init"), "--data", str(val),
                     "--source-column", "query", "--target-column", "document", "--out", str(tmp_path / "before"))
    assert before.returncode == 0, before.stderr
    tuned = run_cli("finetune", "--task", "retrieval", "--init", str(tmp_path / "init"), "--train", str(train),
                    "--val", str(val), "--source-column", "query", "--target-column", "document", "--out",
                    str(tmp_path / "run"), "--epochs", "10", "--lr", "2e-3", "--batch-size", "32", "--patience", "20")
    assert tuned.returncode == 0, tuned.stderr
    after = run_cli("evaluate", "--task", "retrieval", "--ckpt", str(tmp_path / "run"), "--data", str(val),
                    "--source-column", "query", "--target-column", "document", "--out", str(tmp_path / "after"))
    assert after.returncode == 0, after.stderr
    recall = [json.loads((tmp_path / name / "metrics.json").read_text())["recall_at_1"] for name in ("before", "after")]
    assert recall[1] > recall[0] + 0.3 and recall[1] > 0.5
