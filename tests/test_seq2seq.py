"""Encoder-decoder models: cached decoding, beam search, span corruption, seq2seq fine-tuning
(encoder-decoder and decoder-only), its evaluation, and the CLI around them."""

from __future__ import annotations

import json
import random

import pytest
import torch

from bigmodel.config import GenerateConfig, ModelConfig
from bigmodel.infer.seq2seq import decode
from bigmodel.model.transformer import Transformer

from .conftest import metric_rows, run_cli
from .test_finetune import write_rows


def sharp_model(**overrides) -> Transformer:
    """A random model with large weights, so its greedy choices are varied and well separated."""
    torch.manual_seed(0)
    values = dict(vocab_size=40, block_size=48, n_layer=2, n_head=2, n_embd=32, encoder_layers=2, tie_embeddings=False)
    model = Transformer(ModelConfig(**{**values, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(20)
    return model


def source_batch() -> tuple[torch.Tensor, torch.Tensor]:
    source = torch.randint(3, 40, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(source, dtype=torch.bool)
    mask[1, 6:] = False  # a shorter source in the batch: its padding must not matter
    return source, mask


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_cached_seq2seq_decoding_equals_recomputing_everything(positions):
    model = sharp_model(positions=positions)
    source, mask = source_batch()
    memory = model.encode(source, mask)
    cached = decode(model, [[0]] * 3, GenerateConfig(max_new_tokens=12, temperature=0), stop_id=1, memory=memory)
    for row in range(3):
        seq = [0]
        for _ in range(12):  # no cache: the whole target so far, and the source, through the model each step
            logits, _ = model(torch.tensor([seq]), source=source[row:row + 1, :int(mask[row].sum())])
            seq.append(int(logits[0, -1].argmax()))
            if seq[-1] == 1:
                break
        expected = seq[1:seq.index(1, 1)] if 1 in seq[1:] else seq[1:]
        assert cached[row] == expected
    assert len({tuple(r) for r in cached}) > 1, "the check needs outputs that differ between sources"


def test_source_padding_changes_nothing():
    model = sharp_model()
    source, mask = source_batch()
    logits, _ = model(torch.zeros(3, 4, dtype=torch.long), source=source, source_mask=mask)
    source[1, 6:] = 7
    again, _ = model(torch.zeros(3, 4, dtype=torch.long), source=source, source_mask=mask)
    assert torch.equal(logits, again)


@pytest.mark.parametrize("encoder_layers", [2, 0])
def test_beam_search_of_width_one_is_greedy_and_wider_beams_score_at_least_as_well(encoder_layers):
    model = sharp_model(encoder_layers=encoder_layers)
    source, mask = source_batch()
    memory = model.encode(source, mask) if encoder_layers else None
    prefixes = [[0]] * 3 if encoder_layers else source.tolist()
    greedy = GenerateConfig(max_new_tokens=10, temperature=0)
    assert decode(model, prefixes, greedy, 1, memory, beam=True) == decode(model, prefixes, greedy, 1, memory)

    @torch.no_grad()
    def logprob(prefix: list[int], row: int, target: list[int]) -> float:
        ids = torch.tensor([prefix + target + ([1] if len(target) < 10 else [])])
        logits, _ = model(ids[:, :-1], memory=memory.select(torch.tensor([row])) if memory else None)
        picked = logits[0, len(prefix) - 1:].log_softmax(-1).gather(-1, ids[0, len(prefix):, None])
        return float(picked.sum())

    wide = decode(model, prefixes, GenerateConfig(max_new_tokens=10, temperature=0, beams=4, length_penalty=0.0),
                  1, memory)
    narrow = decode(model, prefixes, greedy, 1, memory)
    for row in range(3):
        assert logprob(prefixes[row], row, wide[row]) >= logprob(prefixes[row], row, narrow[row]) - 1e-4


def test_span_corruption_hides_spans_the_decoder_must_write_back():
    from bigmodel.data.tokenizer import train_char
    from bigmodel.train.objectives import SpanCorruption

    tok = train_char(["abcdefghijklmnopqrstuvwxyz"])
    span = SpanCorruption(tok, seed=0)
    tokens = torch.randint(0, 26, (8, 100))
    inputs, labels = span(tokens)
    sentinel, start = tok.token_to_id("<|mask|>"), tok.token_to_id("<|endoftext|>")
    assert inputs["source"].shape == (8, 100 - 15 + 5) and labels.shape == (8, 15 + 5 + 1)
    assert torch.equal(inputs["idx"][:, 1:], labels[:, :-1]) and bool((inputs["idx"][:, 0] == start).all())
    for row in range(8):  # put each span back where its sentinel stands: the original window
        spans, current = [], None
        for t in labels[row, :-1].tolist():
            if t == sentinel:
                current = []
                spans.append(current)
            else:
                current.append(t)
        assert len(spans) == 5 and all(spans)  # five spans, none empty
        rebuilt = []
        for t in inputs["source"][row].tolist():
            rebuilt += spans.pop(0) if t == sentinel else [t]
        assert rebuilt == tokens[row].tolist()


def reverse_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6))) for _ in range(n)]
    return [(w, w[::-1]) for w in words]


@pytest.fixture(scope="module")
def reversal(shakespeare_char, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reversal")
    write_rows(folder / "train.csv", reverse_rows(600, 0), header=("source", "target"))
    write_rows(folder / "val.csv", reverse_rows(60, 1), header=("source", "target"))
    return folder


def initial_model(data, out, *shape: str) -> None:
    made = run_cli("pretrain", "--data", str(data), "--out", str(out), "--max-iters", "0", "--n-head", "4",
                   "--n-embd", "64", "--block-size", "32", "--positions", "rope", *shape)
    assert made.returncode == 0, made.stderr


@pytest.mark.parametrize("shape", [["--objective", "span", "--encoder-layers", "2", "--n-layer", "2"],
                                   ["--n-layer", "3"]], ids=["encoder-decoder", "decoder-only"])
def test_seq2seq_fine_tuning_learns_to_reverse_words(shakespeare_char, reversal, tmp_path, shape):
    initial_model(shakespeare_char, tmp_path / "init", *shape)
    run = tmp_path / "run"
    tuned = run_cli("finetune", "--task", "seq2seq", "--init", str(tmp_path / "init"), "--train",
                    str(reversal / "train.csv"), "--val", str(reversal / "val.csv"), "--out", str(run),
                    "--epochs", "20", "--lr", "3e-3", "--batch-size", "32", "--label-smoothing", "0.0",
                    "--patience", "20", "--warmup", "0.05")
    assert tuned.returncode == 0, tuned.stderr
    rows = metric_rows(run)
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] / 2 and rows[-1]["token_accuracy"] > 0.8
    scored = run_cli("evaluate", "--task", "seq2seq", "--ckpt", str(run), "--data", str(reversal / "val.csv"),
                     "--out", str(tmp_path / "eval"), "--beams", "2")
    assert scored.returncode == 0, scored.stderr
    figures = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    outputs = [json.loads(line) for line in (tmp_path / "eval" / "outputs.jsonl").read_text().splitlines()]
    assert figures["exact_match"] > 50 and figures["cer"] < 25 and len(outputs) == 60
    assert outputs[0]["reference"] == outputs[0]["source"][::-1]
    (tmp_path / "words.txt").write_text("abcdef\nhgfe\n")
    predicted = run_cli("predict", "--ckpt", str(run), "--input", str(tmp_path / "words.txt"),
                        *([] if "--encoder-layers" in shape else ["--task", "seq2seq"]))
    assert predicted.returncode == 0, predicted.stderr
    answers = [json.loads(line)["output"] for line in predicted.stdout.splitlines()]
    assert len(answers) == 2
    assert sum(a == w[::-1] for a, w in zip(answers, ["abcdef", "hgfe"], strict=True)) >= 1


def test_span_pretraining_lowers_the_loss(shakespeare_char, tmp_path):
    done = run_cli("pretrain", "--data", str(shakespeare_char), "--out", str(tmp_path), "--objective", "span",
                   "--encoder-layers", "2", "--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--block-size", "64",
                   "--max-iters", "60", "--eval-interval", "30", "--eval-iters", "4", "--batch-size", "16",
                   "--lr", "3e-3", "--warmup-iters", "5")
    assert done.returncode == 0, done.stderr
    rows = metric_rows(tmp_path)
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 1.0
    generated = run_cli("generate", "--ckpt", str(tmp_path), "--prompt", "First Citizen: we are <|mask|> poor",
                        "--max-new-tokens", "8", "--beams", "2")
    assert generated.returncode == 0, generated.stderr


def test_name_baseline_scores_a_column_and_bad_seq2seq_input_is_one_line(tmp_path):
    rows = [("def get_name(self):\n    return self._name", "Return the name.", "get name")] * 3
    data = write_rows(tmp_path / "code.csv", rows, header=("source", "summary", "name_words"))
    scored = run_cli("evaluate", "--task", "seq2seq", "--data", str(data), "--target-column", "summary",
                     "--hypothesis-column", "summary", "--out", str(tmp_path / "eval"))
    assert scored.returncode == 0, scored.stderr
    figures = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert figures["bleu"] == pytest.approx(100) and figures["cer"] == 0
    missing = run_cli("finetune", "--task", "seq2seq", "--init", str(tmp_path), "--train", str(data), "--val",
                      str(data), "--target-column", "docstring")
    assert missing.returncode != 0
    missing = run_cli("evaluate", "--task", "seq2seq", "--data", str(data), "--target-column", "docstring",
                      "--hypothesis-column", "name_words")
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "no column 'docstring'" in missing.stderr


def test_builtin_code_dataset_splits_by_module(tmp_path):
    from bigmodel.data.datasets import build

    counts = build("code", tmp_path)
    assert counts["train"] > 3000 and counts["test"] > 200
    modules = {split: {json.loads(line)["module"].split(".")[0] for line in
                       (tmp_path / f"{split}.jsonl").read_text().splitlines()} for split in ("train", "test")}
    assert not modules["train"] & modules["test"]
    row = json.loads((tmp_path / "test.jsonl").read_text().splitlines()[0])
    assert row["summary"] not in row["source"] and row["source"].startswith(("def ", "async def ", "@"))


def test_pinyin_dataset_reads_each_character_and_keeps_a_lookup_baseline(tmp_path):
    from bigmodel.data.datasets import build

    reviews = ["房间很大，银行就在旁边。", "服务很好，还会再来。", "不太干净，行李也没人帮忙。"] * 40
    source = write_rows(tmp_path / "all.csv", [(1, r + str(i)) for i, r in enumerate(reviews)],
                        header=("label", "review"))
    counts = build("pinyin", tmp_path / "out", str(source))
    rows = [json.loads(line) for split in ("train", "val", "test")
            for line in (tmp_path / "out" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sum(counts.values()) == len(rows) == len({r["source"] for r in rows})  # clauses are kept once
    bank = next(r for r in rows if r["source"] == "银 行 就 在 旁 边")
    assert bank["target"] == "yin2 hang2 jiu4 zai4 pang2 bian1"  # 行 read as in 银行, not as in 行李
    assert all(len(r["target"].split()) == len(r["source"].split()) == len(r["lookup"].split()) for r in rows)


def test_translation_pairs_from_the_machines_catalogs_and_a_translation_memory_baseline(tmp_path):
    built = run_cli("dataset", "translation", "--source", "en", "--target", "zh_CN", "--out", str(tmp_path / "t"))
    assert built.returncode == 0, built.stderr
    rows = {split: [json.loads(line) for line in (tmp_path / "t" / f"{split}.jsonl").read_text(encoding="utf-8")
                    .splitlines()] for split in ("train", "val", "test")}
    assert len(rows["train"]) > 10_000 and len(rows["test"]) > 500
    assert not {r["catalog"] for r in rows["train"]} & {r["catalog"] for r in rows["test"]}  # split by package
    corpus = (tmp_path / "t" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    assert corpus[:2] == [rows["train"][0]["source"], rows["train"][0]["target"]]
    test = tmp_path / "test.jsonl"
    picked = rows["test"][:40]
    test.write_text("".join(json.dumps({**r, "lost": r["target"].replace("%s", "")}, ensure_ascii=False) + "\n"
                            for r in picked), encoding="utf-8")
    # a memory holding the test pairs themselves finds each one: every score is perfect
    recalled = run_cli("evaluate", "--task", "seq2seq", "--memory", str(test), "--data", str(test), "--out",
                       str(tmp_path / "recall"))
    assert recalled.returncode == 0, recalled.stderr
    figures = json.loads((tmp_path / "recall" / "metrics.json").read_text())
    assert figures["bleu_tokenize"] == "zh" and figures["bleu"] == pytest.approx(100) and figures["exact_match"] == 100
    with_placeholders = [r for r in picked if "%s" in r["source"]]
    if with_placeholders:
        lost = run_cli("evaluate", "--task", "seq2seq", "--hypothesis-column", "lost", "--data", str(test), "--out",
                       str(tmp_path / "lost"))
        kept = json.loads((tmp_path / "lost" / "metrics.json").read_text())["placeholders_kept"]
        assert lost.returncode == 0 and kept < 100
    # the real baseline: the training memory, on packages it never saw, is far from perfect but not empty
    memory = run_cli("evaluate", "--task", "seq2seq", "--memory", str(tmp_path / "t" / "train.jsonl"), "--data",
                     str(test), "--out", str(tmp_path / "memory"))
    assert memory.returncode == 0, memory.stderr
    chrf = json.loads((tmp_path / "memory" / "metrics.json").read_text())["chrf"]
    assert 3 < chrf < 90
    missing = run_cli("dataset", "translation", "--target", "xx_YY", "--out", str(tmp_path / "none"))
    assert missing.returncode == 1 and "no translated message catalogs" in missing.stderr.strip().splitlines()[-1]


def test_chat_and_near_miss_preference_data_from_the_machines_catalogs_and_stdlib(tmp_path):
    def read(folder: str, split: str) -> list[dict]:
        lines = (tmp_path / folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]

    for name, extra in (("chat", ["--test-rows", "520"]), ("preference", ["--skip", "30", "--examples", "40"])):
        built = run_cli("dataset", name, "--out", str(tmp_path / name), *extra)
        assert built.returncode == 0, built.stderr
    chat, pairs = read("chat", "train"), read("preference", "train")
    assert {r["task"] for r in chat} == {"translate", "summarize"} and len(read("chat", "test")) == 520
    assert not {r["origin"] for r in chat} & {r["origin"] for r in read("chat", "test")}  # split by package/module
    # the pairs ask the 40 training prompts after the 30 an SFT run on `--max-train 30` saw, in the same order
    asked = [r["messages"][0]["content"] for r in chat[30:70]]
    kept = [p["messages"][0]["content"] for p in pairs]
    assert 35 <= len(pairs) <= 40 and kept == [a for a in asked if a in kept]
    answers = {}
    for r in chat:
        answers.setdefault(r["origin"], set()).add(r["messages"][1]["content"])
    for pair in pairs:  # chosen is the reference; rejected another answer of the same catalog or module
        assert pair["chosen"] != pair["rejected"] and pair["rejected"] in answers[pair["origin"]], pair
    assert len(read("preference", "val")) <= 200 and len(read("preference", "test")) <= 200
    # every build shuffles a split alike, so test's first rows stay put whatever --test-rows keeps
    first = [r["messages"][0]["content"] for r in read("chat", "test")[:200]]
    held = [p["messages"][0]["content"] for p in read("preference", "test")]
    assert len(held) >= 150 and held == [f for f in first if f in held]
    alone = run_cli("dataset", "preference", "--samples", "4", "--out", str(tmp_path / "alone"))
    assert alone.returncode == 1 and "--samples needs --rejected-from" in alone.stderr.strip().splitlines()[-1]
