"""`bigmodel prepare`: files → cleaned documents → tokenizer → train.bin / val.bin + meta.json.

Two streaming passes: the first cleans every document into a temporary JSONL file (and
trains the tokenizer on it), the second encodes that file in parallel batches straight
into a memory-mapped token file. The last `val_fraction` of tokens becomes `val.bin`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bigmodel import disk
from bigmodel.config import DataConfig
from bigmodel.data.clean import Cleaner
from bigmodel.data.readers import CorpusReader
from bigmodel.data.tokenizer import EOT, batched, load_tokenizer, special_id, train_bpe, train_char
from bigmodel.errors import BigModelError

ENCODE_BATCH = 512  # documents per encode_batch call: enough for both cores to stay busy


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _clean_pass(cfg: DataConfig, cleaned: Path) -> tuple[CorpusReader, Cleaner]:
    """Read, clean and store each kept document as one JSON line: [text, ends_source].

    Paragraphs of one file are stored rejoined by their blank line, so the tokenizer is
    trained on exactly the text it will encode."""
    reader = CorpusReader(cfg.input, cfg.text_field, cfg.text_column)
    cleaner = Cleaner(dedup=cfg.dedup, scrub=cfg.scrub_pii)
    with cleaned.open("w", encoding="utf-8") as out:
        for doc in tqdm(reader, desc="clean", unit=" docs", mininterval=1.0):
            text = cleaner(doc.text)
            if text is not None:
                text = text if doc.ends_source else text + "\n\n"
                out.write(json.dumps([text, doc.ends_source], ensure_ascii=False) + "\n")
    if cleaner.counts["documents_kept"] == 0:
        raise BigModelError(
            f"the corpus is empty after cleaning ({cleaner.counts['documents_in']} documents read, "
            f"{cleaner.counts['empty_dropped']} empty, {cleaner.counts['duplicates_dropped']} duplicates)"
        )
    return reader, cleaner


def _documents(cleaned: Path) -> Iterator[tuple[str, bool]]:
    with cleaned.open(encoding="utf-8") as fh:
        for line in fh:
            text, ends_source = json.loads(line)
            yield text, ends_source


def _texts(cleaned: Path) -> Iterator[str]:
    return (text for text, _ in _documents(cleaned))


def _build_tokenizer(cfg: DataConfig, cleaned: Path, n_docs: int):
    if cfg.tokenizer == "bpe":
        return train_bpe(_texts(cleaned), cfg.vocab_size, length=n_docs)
    if cfg.tokenizer == "char":
        return train_char(_texts(cleaned))
    return load_tokenizer(cfg.tokenizer)


def _encode_pass(tok, cleaned: Path, out: Path, dtype: np.dtype, n_docs: int) -> int:
    """Append every document's ids to `out`, and an end-of-text token after each file,
    record or row."""
    eot = special_id(tok, EOT)
    total = 0
    with out.open("wb") as fh, tqdm(total=n_docs, desc="encode", unit=" docs", mininterval=1.0) as bar:
        for batch in batched(_documents(cleaned), ENCODE_BATCH):
            texts = [text for text, _ in batch]
            for (_, ends), enc in zip(batch, tok.encode_batch(texts, add_special_tokens=False), strict=True):
                ids = enc.ids + [eot] if ends and eot is not None else enc.ids
                np.asarray(ids, dtype=dtype).tofile(fh)
                total += len(ids)
            bar.update(len(batch))
    return total


def _split_tail(all_bin: Path, train_bin: Path, val_bin: Path, dtype: np.dtype, n_tokens: int,
                val_fraction: float) -> tuple[int, int]:
    """Move the last `val_fraction` of tokens into val.bin without loading the file."""
    n_val = int(n_tokens * val_fraction)
    if val_fraction > 0 and n_val < 2:
        raise BigModelError(f"corpus too small: {n_tokens} tokens leave no validation split")
    n_train = n_tokens - n_val
    if n_train < 2:
        raise BigModelError(f"corpus too small: {n_tokens} tokens leave no training split")
    tokens = np.memmap(all_bin, dtype=dtype, mode="r")
    with val_bin.open("wb") as fh:
        for start in range(n_train, n_tokens, 1 << 24):
            tokens[start:min(start + (1 << 24), n_tokens)].tofile(fh)
    del tokens
    os.truncate(all_bin, n_train * dtype.itemsize)
    disk.sync(val_bin)
    disk.replace(all_bin, train_bin)
    return n_train, n_val


def prepare(cfg: DataConfig) -> dict:
    """Run the whole pipeline into `cfg.out`; returns (and writes) the meta dict."""
    if not 0 <= cfg.val_fraction < 1:
        raise BigModelError("--val-fraction must be in [0, 1)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".prepare-tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        cleaned = work / "cleaned.jsonl"
        reader, cleaner = _clean_pass(cfg, cleaned)
        n_docs = cleaner.counts["documents_kept"]
        tok = _build_tokenizer(cfg, cleaned, n_docs)
        vocab_size = tok.get_vocab_size()
        dtype = token_dtype(vocab_size)
        n_tokens = _encode_pass(tok, cleaned, work / "all.bin", dtype, n_docs)
        n_train, n_val = _split_tail(work / "all.bin", out / "train.bin", out / "val.bin", dtype,
                                     n_tokens, cfg.val_fraction)
        tok.save(str(out / "tokenizer.json"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {
        "tokenizer": cfg.tokenizer if cfg.tokenizer in ("bpe", "char") else str(Path(cfg.tokenizer).resolve()),
        "vocab_size": vocab_size,
        "dtype": dtype.name,
        "train_tokens": n_train,
        "val_tokens": n_val,
        "val_fraction": cfg.val_fraction,
        "sources": [vars(s) for s in reader.sources],
        "cleaning": cleaner.report(),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    return meta
