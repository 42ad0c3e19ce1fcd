import json
from collections import Counter

import numpy as np
import pytest

from bigmodel.config import DataConfig
from bigmodel.data.clean import Cleaner, scrub_pii
from bigmodel.data.prepare import prepare
from bigmodel.data.readers import CorpusReader
from bigmodel.data.tokenizer import EOT, StreamDecoder, load_tokenizer, train_bpe
from bigmodel.errors import BigModelError

from .conftest import TANGPOEMS, shared_file


def test_readers_txt_jsonl_csv_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("first para\nline two\n\n\nsecond para\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"body": "json one"}\n\n{"body": "json two"}\n', encoding="utf-8")
    (tmp_path / "c.csv").write_text('id,review\n1,"commas, and ""quotes"""\n2,"multi\nline"\n', encoding="utf-8")
    reader = CorpusReader([str(tmp_path)], text_field="body", text_column="review")
    docs = list(reader)
    assert [d.text for d in docs] == ["first para\nline two", "second para", "json one", "json two",
                                      'commas, and "quotes"', "multi\nline"]
    assert [d.ends_source for d in docs[:2]] == [False, True]
    assert all(len(s.sha256) == 64 and s.bytes > 0 for s in reader.sources)


@pytest.mark.parametrize("name,content,message", [
    ("x.jsonl", '{"text": "ok"}\n{"other": 1}\n', "line 2 has no 'text' field"),
    ("x.jsonl", '{"text": "ok"}\nnot json\n', "line 2 is not valid JSON"),
    ("x.csv", "a,b\n1,2\n", "no column 'text'"),
])
def test_reader_errors_name_file_and_place(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(BigModelError, match=message):
        list(CorpusReader([str(path)]))


def test_non_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"fine\n" + "caf\xe9\n".encode("latin-1"))
    with pytest.raises(BigModelError, match="line 2 is not valid UTF-8"):
        list(CorpusReader([str(path)]))


def test_cleaner_normalises_strips_controls_and_dedups():
    cleaner = Cleaner()
    decomposed = "cafe\u0301"
    assert cleaner(decomposed) == "caf\u00e9"
    assert cleaner("bell\x07 and\r\nnewline") == "bell and\nnewline"
    assert cleaner("caf\u00e9") is None  # same as the first one once normalised
    assert cleaner("   \n") is None
    report = cleaner.report()
    assert report["duplicates_dropped"] == 1 and report["empty_dropped"] == 1
    assert report["control_chars_removed"] == 1 and report["documents_kept"] == 2


def test_pii_scrubbing_types_and_validation():
    counts = Counter()
    text = ("mail a.b+c@example.co.uk or call +1 (415) 555-0132 / 13812345678; server 192.168.1.20; "
            "card 4111 1111 1111 1111; id 11010519491231002X; not a card 1234 5678 9012 3456; "
            "version 1.2.3.4.5; year 2024")
    out = scrub_pii(text, counts)
    assert "<EMAIL>" in out and "<IP>" in out and "<CARD>" in out and "<ID_CN>" in out
    assert out.count("<PHONE>") == 2
    assert "1234 5678 9012 3456" in out  # fails the Luhn check, so it is not a card number
    assert "1.2.3.4.5" in out and "2024" in out
    assert counts == Counter(EMAIL=1, PHONE=2, IP=1, CARD=1, ID_CN=1)


def test_prepare_char_writes_bins_meta_and_tokenizer(tmp_path):
    src = tmp_path / "corpus.txt"
    paragraphs = [f"paragraph {i} about {'x' * (i % 7)}" for i in range(300)] + ["paragraph 1 about x"]
    src.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    meta = prepare(DataConfig(input=[str(src)], out=str(tmp_path / "out"), tokenizer="char", val_fraction=0.1))
    out = tmp_path / "out"
    train = np.memmap(out / "train.bin", dtype=np.uint16, mode="r")
    val = np.memmap(out / "val.bin", dtype=np.uint16, mode="r")
    assert meta["cleaning"]["duplicates_dropped"] == 1
    assert len(train) == meta["train_tokens"] and len(val) == meta["val_tokens"]
    assert abs(len(val) / (len(train) + len(val)) - 0.1) < 0.01
    tok = load_tokenizer(out)
    text = tok.decode(np.concatenate([train, val]).tolist())
    assert text.startswith("paragraph 0 about \n\nparagraph 1 about x\n\n")
    assert json.loads((out / "meta.json").read_text())["sources"][0]["sha256"]


def test_prepare_scrub_pii_reports_counts(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text("\n".join(json.dumps({"text": f"write to user{i}@mail.com please"}) for i in range(50)),
                   encoding="utf-8")
    meta = prepare(DataConfig(input=[str(src)], out=str(tmp_path / "o"), tokenizer="char", scrub_pii=True))
    assert meta["cleaning"]["pii_replaced"]["EMAIL"] == 50
    assert meta["cleaning"]["duplicates_dropped"] == 49  # identical once scrubbed
    assert "@" not in load_tokenizer(tmp_path / "o").get_vocab()


def test_empty_corpus_after_cleaning_is_an_error(tmp_path):
    src = tmp_path / "blank.txt"
    src.write_text("\n\n   \n", encoding="utf-8")
    with pytest.raises(BigModelError, match="empty after cleaning"):
        prepare(DataConfig(input=[str(src)], out=str(tmp_path / "o")))


def test_bpe_on_chinese_round_trips_and_streams_whole_characters(tmp_path):
    lines = shared_file(TANGPOEMS).read_text(encoding="utf-8").splitlines()[:4000]
    tok = train_bpe(lines, vocab_size=2000)
    sample = "秦川雄帝宅，函谷壯皇居。🙂 mixed English"
    ids = tok.encode(sample).ids
    assert tok.decode(ids) == sample
    decoder = StreamDecoder(tok)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == sample
    assert not any("\ufffd" in p for p in pieces)
    assert tok.token_to_id(EOT) is not None
