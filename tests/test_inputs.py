"""Row i out is row i in: blank lines keep their rows, records follow the json and csv modules' own rules,
and pipes stream (the first answer leaves before the last line arrives; memory stays flat)."""

import json
import os
import subprocess
import sys
import threading
import tracemalloc

import numpy as np
import pytest

from bigmodel.data.labelled import read_rows
from bigmodel.data.readers import input_lines
from bigmodel.data.tokenizer import batched
from bigmodel.errors import BigModelError

from .conftest import error_line, run_cli


@pytest.mark.parametrize("inside", ["\u2028", "\u0085", "\f", "\u2029", "\x1c"])
def test_a_jsonl_string_holding_a_unicode_line_break_stays_one_record(tmp_path, inside):
    path = tmp_path / "rows.jsonl"
    rows = [{"text": f"before{inside}after", "label": "a"}, {"text": "second", "label": "b"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert read_rows(path) == [(1, rows[0]), (2, rows[1])]


def test_a_quoted_csv_field_keeps_its_newlines_and_rows_are_named_by_their_first_line(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b'text,label\n"one\nline two\r\nthree",a\nplain,b\n')
    assert read_rows(path) == [(2, {"text": "one\nline two\r\nthree", "label": "a"}),
                               (5, {"text": "plain", "label": "b"})]


def test_input_lines_keep_blank_lines_and_read_a_pipe(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"first\n\n  \nlast\r\n")
    assert list(input_lines(str(path))) == ["first", "", "  ", "last"]
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(b"a\n\nb"))
    writer.start()
    assert list(input_lines(str(fifo))) == ["a", "", "b"]
    writer.join()
    with pytest.raises(BigModelError, match="no such input file"):
        input_lines(str(tmp_path / "missing.txt"))


def test_a_gigabyte_through_a_pipe_is_read_in_flat_memory(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    line = ("x" * 4095 + "\n").encode()
    chunk, chunks = line * 1024, 256  # 4 MiB a write, 1 GiB in all

    def feed() -> None:
        with fifo.open("wb") as fh:
            for _ in range(chunks):
                fh.write(chunk)

    writer = threading.Thread(target=feed)
    writer.start()
    tracemalloc.start()
    try:
        lines = sum(len(batch) for batch in batched(input_lines(str(fifo)), 64))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        writer.join()
    assert lines == 1024 * chunks
    assert peak < 16 * 2**20, f"reading 1 GiB held {peak / 2**20:.0f} MiB at once"


def test_zeroshot_answers_from_a_pipe_before_its_last_line_and_gives_blank_lines_their_rows(tmp_path):
    """The first batch's rows come out while the writer still holds the pipe open with lines to come."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "bigmodel.cli", "zeroshot", "--ckpt", "minilm", "--labels",
                             "sports,cooking", "--input", str(fifo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    first = [f"the match ended {i} to nil" for i in range(1024)]
    with fifo.open("w", encoding="utf-8") as fh:
        fh.write("\n".join(first) + "\n")
        fh.flush()
        got = proc.stdout.readline()  # blocks until the first batch is answered; the pipe is still open
        assert json.loads(got)["text"] == first[0]
        fh.write("\nboil the pasta\n")
    rest = proc.stdout.read().splitlines()
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    rows = [json.loads(got), *map(json.loads, rest)]
    assert [r["text"] for r in rows] == [*first, "", "boil the pasta"]
    assert rows[-1]["label"] == "cooking"


def test_embed_gives_a_blank_line_its_row_or_names_it_when_the_model_reads_nothing_there(tmp_path, trained_run):
    texts = tmp_path / "in.txt"
    texts.write_text("a good film\n\nan awful one\n", encoding="utf-8")
    done = run_cli("embed", "--ckpt", "minilm", "--input", str(texts), "--out", str(tmp_path / "v.npy"))
    assert done.returncode == 0, done.stderr
    vectors = np.load(tmp_path / "v.npy")
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    refused = run_cli("embed", "--ckpt", str(trained_run), "--input", str(texts), "--out", str(tmp_path / "w.npy"))
    assert refused.returncode == 1
    assert error_line(refused) == (f"bigmodel embed: error: {texts}: line 2 is blank, and this model reads no "
                                   "token in a blank text; remove the line or give it text")
    assert not (tmp_path / "w.npy").exists() and not (tmp_path / "w.npy.part").exists()
