"""Explanations on real fine-tuned checkpoints: attributions, attention figures, reports, faithfulness, the route."""

import json
import struct
import time
from html.parser import HTMLParser

import pytest
import torch

from bigmodel.config import DataConfig, FinetuneConfig, ServeConfig, TrainConfig
from bigmodel.data.labelled import read_labelled
from bigmodel.data.prepare import prepare
from bigmodel.errors import BigModelError
from bigmodel.infer.explain import explain_classifier, explain_next_token, faithfulness
from bigmodel.model.checkpoint import load_checkpoint
from bigmodel.train.finetune import finetune
from bigmodel.train.trainer import pretrain

from .conftest import SHARED, run_cli, shared_file, tiny_model
from .test_finetune import classifier_from, synthetic, write_rows


@pytest.fixture(scope="module")
def word_classifier(trained_run, tmp_path_factory):
    """The char-level decoder fine-tuned to tell texts holding "good" from texts holding "evil"."""
    return classifier_from(trained_run, synthetic(240, 0), tmp_path_factory.mktemp("word_classifier"), epochs=8)


@pytest.fixture(scope="module")
def sst2_minilm(tmp_path_factory):
    """MiniLM fine-tuned for one short epoch on 320 SST-2 sentences: a real classifier with WordPiece tokens."""
    out = tmp_path_factory.mktemp("sst2")
    train = shared_file(SHARED / "sst2" / "train.tsv")
    finetune(FinetuneConfig(init="minilm", train=str(train), val=str(SHARED / "sst2" / "dev.tsv"),
                            text_column="sentence", max_train=320, epochs=1, lr=1e-4, max_length=64,
                            out=str(out / "ft")))
    return out / "ft"


def test_attributions_point_at_the_deciding_word_and_add_up(word_classifier):
    model, tok, _ = load_checkpoint(word_classifier, with_head=True)
    for text, word in (("xz good yy", "good"), ("yevil xzz", "evil"), ("zzz y good", "good")):
        e = explain_classifier(model, tok, text)
        assert e.target == word
        start = text.index(word)
        ig = e.attributions["integrated_gradients"]
        top = sorted(range(len(e.tokens)), key=lambda i: -ig[i])[:2]
        assert all(start <= i < start + len(word) for i in top), (e.tokens, ig)
        # integrated gradients' completeness: the shares add up to the score's change, within Captum's delta
        assert sum(ig) == pytest.approx(e.logit_difference, abs=abs(e.convergence_delta) + 1e-5)
        assert abs(e.convergence_delta) < 0.02 * abs(e.logit_difference) + 1e-3
        assert e.attention.shape == (2, 2, len(e.tokens), len(e.tokens))
        assert torch.allclose(torch.from_numpy(e.attention.sum(-1)), torch.ones(2, 2, len(e.tokens)), atol=1e-5)
        assert torch.allclose(torch.from_numpy(e.rollout.sum(-1)), torch.ones(len(e.tokens)), atol=1e-5)


def test_lime_and_kernel_shap_point_at_the_deciding_word(word_classifier):
    model, tok, _ = load_checkpoint(word_classifier, with_head=True)
    # texts whose word matters: without "good" this model says "evil" anyway, so deleting "evil" moves little
    for text, word in (("xz good yy", "good"), ("zzz y good", "good")):
        e = explain_classifier(model, tok, text, methods=("lime", "kernel_shap", "occlusion"), samples=256)
        assert e.convergence_delta is None and set(e.attributions) == {"lime", "kernel_shap", "occlusion"}
        start = text.index(word)
        for method, values in e.attributions.items():
            best = max(range(len(values)), key=values.__getitem__)
            assert start <= best < start + len(word), (method, e.tokens, values)
        # kernel SHAP's weights are Shapley estimates: with every token present vs none they add up to the change
        assert sum(e.attributions["kernel_shap"]) == pytest.approx(e.logit_difference, rel=0.05, abs=0.05)


def test_every_method_beats_random_tokens_on_faithfulness(word_classifier):
    model, tok, _ = load_checkpoint(word_classifier, with_head=True)
    methods = ("integrated_gradients", "occlusion", "lime", "kernel_shap")
    report = faithfulness(model, tok, [text for text, _ in synthetic(40, 5)], steps=16, methods=methods, samples=128)
    rnd = report["random"]
    for method in methods:
        found = report[method]
        assert found["comprehensiveness@20"] >= 2 * rnd["comprehensiveness@20"], method
        assert found["comprehensiveness@20"] > 0.1 and found["seconds"] > 0, method
        assert found["comprehensiveness@50"] > rnd["comprehensiveness@50"] + 0.1, method
        assert found["sufficiency@50"] < rnd["sufficiency@50"], method


def test_a_decoders_next_token_is_explained(trained_run):
    model, tok, _ = load_checkpoint(trained_run)
    e = explain_next_token(model, tok, "ROMEO:\nWhat")
    assert e.tokens == list("ROMEO:\nWhat") and len(e.probabilities) == 5
    assert e.target == max(e.probabilities, key=e.probabilities.get)
    ig = e.attributions["integrated_gradients"]
    assert sum(ig) == pytest.approx(e.logit_difference, abs=abs(e.convergence_delta) + 1e-5)
    causal = torch.from_numpy(e.attention).triu(1)
    assert float(causal.abs().max()) == 0.0  # no position attends to a later one


class Report(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.images, self.title, self._in_title = [], [], "", False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and attrs.get("class") == "tok":
            self.tokens.append(attrs["title"])
        if tag == "img":
            self.images.append(attrs["src"])
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def chinese_classifier(tmp_path_factory):
    """A character-level encoder: masked-LM pretraining on 400 ChnSentiCorp reviews, then fine-tuned on them."""
    out = tmp_path_factory.mktemp("chnsenti")
    reviews = shared_file(SHARED / "chnsenticorp" / "train.csv")
    rows = read_labelled(reviews, "review", "label")[:400]
    corpus = out / "reviews.txt"
    corpus.write_text("\n\n".join(r.text for r in rows), encoding="utf-8")
    meta = prepare(DataConfig(input=[str(corpus)], out=str(out / "data"), tokenizer="char", dedup=False))
    model = tiny_model(meta["vocab_size"], causal=False, n_embd=64, block_size=128)
    train = TrainConfig(data=str(out / "data"), out=str(out / "mlm"), objective="mlm", max_iters=60, batch_size=16,
                        eval_interval=60, eval_iters=2)
    pretrain(model, train, {"model": model, "train": train})
    labelled = write_rows(out / "train.csv", [(r.text, r.label) for r in rows])
    finetune(FinetuneConfig(init=str(out / "mlm"), train=str(labelled), val=str(labelled), epochs=1, lr=1e-3,
                            max_length=128, out=str(out / "ft")))
    return out / "ft", rows[1].text[:40]


@pytest.mark.parametrize("language", ["english", "chinese"])
def test_reports_for_english_and_chinese_are_written_and_open(sst2_minilm, chinese_classifier, tmp_path, language):
    ckpt, text = (sst2_minilm, "a gorgeous, witty, seductive movie.") if language == "english" else chinese_classifier
    result = run_cli("explain", "--ckpt", str(ckpt), "--text", text, "--out", str(tmp_path), "--steps", "20")
    assert result.returncode == 0, result.stderr
    numbers = json.loads((tmp_path / "explanation.json").read_text(encoding="utf-8"))
    assert numbers["target"] in ("0", "1") and len(numbers["tokens"]) == len(numbers["integrated_gradients"])
    assert numbers["tokens"][:3] == (["[CLS]", "a", "gorgeous"] if language == "english" else list(text[:3]))
    report = Report()
    report.feed((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert report.title == f"bigmodel explain: {numbers['target']}"
    assert len(report.tokens) == 2 * len(numbers["tokens"])  # integrated gradients, then occlusion (the default)
    assert len(report.images) == 2 and all(src.startswith("data:image/png;base64,") for src in report.images)
    width, height = png_size(tmp_path / "attention.png")
    assert width > 600 and height > 300 and (tmp_path / "attention.png").stat().st_size > 20_000
    assert "\x1b[48;2;" in result.stdout  # the coloured terminal view


def test_bad_explain_input_is_one_line(sst2_minilm, trained_run, tmp_path):
    for args, fragment in (
        (["--ckpt", "minilm", "--text", "hi"], "nothing to explain"),
        (["--ckpt", str(sst2_minilm), "--text", "hi", "--target", "maybe"], "not a label of this model"),
        (["--ckpt", str(sst2_minilm), "--text", "word " * 600], "the model's context holds 512"),
        (["--ckpt", str(trained_run), "--evaluate", "--data", "x.csv"], "measures a fine-tuned classifier"),
        (["--ckpt", str(sst2_minilm)], "needs --text"),
        (["--ckpt", str(sst2_minilm), "--text", "hi", "--method", "ig,saliency"], "--method takes ig, occlusion"),
    ):
        result = run_cli("explain", *args, "--out", str(tmp_path))
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert fragment in result.stderr.strip().splitlines()[-1], result.stderr


def test_faithfulness_from_the_command_line(word_classifier, tmp_path):
    data = write_rows(tmp_path / "val.csv", synthetic(20, 9))
    result = run_cli("explain", "--ckpt", str(word_classifier), "--evaluate", "--data", str(data), "--out",
                     str(tmp_path), "--steps", "10", "--method", "all", "--samples", "64")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "faithfulness.json").read_text())
    assert report["texts"]["count"] == 20
    table = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[2:-1]}
    assert set(table) == {"integrated_gradients", "occlusion", "lime", "kernel_shap", "random"}
    assert float(table["lime"][1]) == pytest.approx(report["lime"]["comprehensiveness@20"], abs=1e-4)


def test_the_explain_route_answers_like_the_command(word_classifier, trained_run):
    from fastapi.testclient import TestClient

    from bigmodel.serve.app import create_app

    with TestClient(create_app(ServeConfig(ckpt=str(word_classifier)))) as client:
        for _ in range(200):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        answer = client.post("/v1/explain", json={"input": "xz good yy", "steps": 20})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["object"] == "explanation" and body["target"] == "good" and len(body["tokens"]) == 10
        assert client.post("/v1/explain", json={"input": "x", "target": "neutral"}).json()["error"]["param"] == "target"
        assert client.post("/v1/explain", json={"input": "x" * 40}).status_code == 413  # longer than the context
    with TestClient(create_app(ServeConfig(ckpt=str(trained_run)))) as client:
        for _ in range(200):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        refused = client.post("/v1/explain", json={"input": "KING"})
        assert refused.status_code == 400 and "no classifier head" in refused.json()["error"]["message"]


def test_unknown_baseline_is_refused(word_classifier):
    model, tok, _ = load_checkpoint(word_classifier, with_head=True)
    with pytest.raises(BigModelError, match="--baseline"):
        explain_classifier(model, tok, "good", baseline="zeros")
