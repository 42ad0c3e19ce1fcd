"""Fairness audits, the model card and the promotion gate, on a classifier trained to be unfair."""

from __future__ import annotations

import json
import random
from html.parser import HTMLParser

import pytest

from bigmodel.errors import BigModelError
from bigmodel.evaluate.card import requirements, unmet
from bigmodel.evaluate.fairness import counterfactual, group_figures, swap_list

from .conftest import error_line, run_cli
from .test_finetune import classifier_from, write_rows
from .test_playground import CHROMIUM, FLAGS


def gendered(n: int, seed: int) -> list[tuple[str, str]]:
    """Texts about a person, labelled by nothing but the pronoun: a model that learns them is unfair by design."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        who = rng.choice(["he", "she"])
        noise = "".join(rng.choice("xyz ") for _ in range(rng.randint(2, 6)))
        rows.append((f"{noise} {who} {noise[::-1]}".strip(), "1" if who == "he" else "0"))
    return rows


@pytest.fixture(scope="module")
def unfair(trained_run, tmp_path_factory):
    return classifier_from(trained_run, gendered(200, 0), tmp_path_factory.mktemp("unfair"), epochs=6)


def test_swap_lists_rewrite_both_ways_and_keep_case():
    en, zh = swap_list("en"), swap_list("zh")
    assert en.swap("He gave his sister the book; she thanked him.") == \
        "She gave her brother the book; he thanked her."
    assert en.swap("THE KING AND John") == "THE QUEEN AND Mary" and en.swap("theme shell") == "theme shell"
    assert zh.swap("他的其他朋友和男朋友都说她好") == "她的其他朋友和女朋友都说他好"  # 其他 is "other", not "he"
    assert en.group("she and her mother") == "mentions she/her…" and en.group("a dog") == "mentions neither"
    assert en.group("he met her") == "mentions both"


def test_a_swap_file_with_an_odd_line_is_refused(tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("# mine\nactor actress\nsingle\n", encoding="utf-8")
    with pytest.raises(BigModelError, match=r"pairs.txt:3: a swap line holds two different words"):
        swap_list(str(pairs))
    pairs.write_text("actor\tactress\n\nwaiter waitress  # service\n", encoding="utf-8")
    assert swap_list(str(pairs)).swap("the Waiter and the actress") == "the Waitress and the actor"


def test_group_figures_and_counterfactual_match_a_hand_count():
    report = group_figures([1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1], ["a", "a", "a", "b", "b", "b"], ["0", "1"], 1,
                           min_size=3)
    assert report["groups"]["a"]["accuracy"] == pytest.approx(2 / 3) and report["groups"]["b"]["positive_rate"] == \
        pytest.approx(2 / 3)
    assert report["gaps"]["positive_rate"] == {"gap": pytest.approx(1 / 3), "highest": "b", "lowest": "a"}
    assert report["groups"]["a"]["base_rate"] == pytest.approx(2 / 3)
    import numpy as np

    table = {"he is kind": [0.2, 0.8], "she is kind": [0.7, 0.3], "a dog": [0.5, 0.5], "his cat": [0.1, 0.9],
             "her cat": [0.15, 0.85]}
    found = counterfactual(list(table)[:4], swap_list("en"), lambda texts: np.array([table[t] for t in texts]),
                           ["0", "1"])
    assert found["rewritten"] == 3 and found["flips"] == 2 and found["flip_rate"] == pytest.approx(2 / 3)
    # shifts of the predicted class: he 0.8 -> 0.3, she 0.7 -> 0.2, his 0.9 -> 0.85
    assert found["mean_shift"] == pytest.approx((0.5 + 0.5 + 0.05) / 3)
    assert found["worst"][0]["swapped_label"] != found["worst"][0]["label"]


def test_fairness_audit_finds_the_bias_and_the_card_and_gate_report_it(unfair, tmp_path):
    data = write_rows(tmp_path / "test.csv", gendered(60, 7))
    done = run_cli("audit", "--fairness", "--ckpt", str(unfair), "--data", str(data), "--swap", "en",
                   "--out", str(tmp_path / "audit"))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "audit" / "fairness.json").read_text())
    assert report["groups"]["mentions he/his…"]["positive_rate"] > 0.9
    assert report["groups"]["mentions she/her…"]["positive_rate"] < 0.1
    assert report["gaps"]["positive_rate"]["gap"] > 0.8 and report["counterfactual"]["flip_rate"] > 0.9
    assert (tmp_path / "audit" / "fairness.png").stat().st_size > 10_000
    assert "flip rate" in done.stdout

    card = tmp_path / "card.html"
    made = run_cli("card", "--ckpt", str(unfair), "--out", str(card))
    assert made.returncode == 0, made.stderr[-2000:]
    markdown = run_cli("card", "--ckpt", str(unfair)).stdout
    assert "## Fairness" in markdown and "Membership inference not measured: `bigmodel audit" in markdown
    assert "| flip_rate |" in markdown and "training FLOPs" in markdown

    class Sections(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.ids: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag == "section":
                self.ids.append(dict(attrs)["id"])

    parsed = Sections()
    parsed.feed(card.read_text(encoding="utf-8"))
    assert parsed.ids[:7] == ["model", "training-data", "training-compute", "evaluation", "privacy", "explanations",
                              "fairness"]

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registered = run_cli("registry", "register", "--ckpt", str(unfair), "--name", "unfair", "--tracking-uri",
                         uri)
    assert registered.returncode == 0, registered.stderr[-2000:]
    refused = run_cli("registry", "alias", "--name", "unfair", "--version", "1", "--alias", "production",
                      "--require", "accuracy>=0.85,mia_auc<=0.6,flip_rate<=0.05", "--tracking-uri", uri)
    line = error_line(refused)
    assert "stays off @production" in line and "flip_rate" in line and "mia_auc not measured" in line
    assert "accuracy" not in line.split("fails", 1)[1]  # it learnt its (unfair) task: accuracy passes
    listed = run_cli("registry", "list", "--name", "unfair", "--tracking-uri", uri)
    assert listed.stdout.startswith("unfair/1\t-")  # no alias moved
    allowed = run_cli("registry", "alias", "--name", "unfair", "--version", "1", "--alias", "staging",
                      "--require", "accuracy>=0.85", "--tracking-uri", uri)
    assert allowed.returncode == 0 and "card meets accuracy>=0.85" in allowed.stdout


def test_the_card_opens_in_a_browser(unfair, tmp_path):
    from playwright import sync_api

    card = tmp_path / "card.html"
    assert run_cli("card", "--ckpt", str(unfair), "--out", str(card)).returncode == 0
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(card.as_uri())
        assert page.title() == "Model card: ft"
        assert page.locator("section#training-compute table tr").count() >= 6
        assert "parameters" in page.locator("section#model").inner_text()
        browser.close()


def test_bad_gates_cards_and_audits_are_one_line(unfair, tmp_path):
    with pytest.raises(BigModelError, match="'accuracy=>0.8' is not NAME>=NUMBER"):
        requirements("accuracy=>0.8")
    assert unmet({"accuracy": 0.9, "flip_rate": 0.2}, "accuracy>=0.85, flip_rate<=0.05") == \
        ["flip_rate 0.2 (needs <=0.05)"]
    folder = tmp_path / "empty"
    folder.mkdir()
    odd = tmp_path / "odd.txt"
    odd.write_text("he she\nhim\n", encoding="utf-8")
    data = write_rows(tmp_path / "d.csv", gendered(4, 1))
    for args, fragment in (
        (["card", "--ckpt", str(folder)], "not a checkpoint"),
        (["card", "--ckpt", str(unfair), "--out", str(tmp_path / "card.pdf")], "written as .md or .html"),
        (["audit", "--fairness", "--ckpt", str(unfair), "--data", str(data), "--swap", str(odd)],
         "odd.txt:2: a swap line holds two different words"),
        (["audit", "--fairness", "--ckpt", str(unfair), "--data", str(data)], "--group-column COL or --swap"),
        (["audit", "--ckpt", str(unfair)], "audit needs --train FILE"),
    ):
        assert fragment in error_line(run_cli(*args)), args
