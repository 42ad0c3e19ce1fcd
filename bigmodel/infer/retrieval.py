"""Dense retrieval: documents embedded once into an index folder, queries embedded at search
time and compared by cosine (a matrix product with numpy: exact, and fast enough for tens of
thousands of documents on a CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from bigmodel.errors import BigModelError
from bigmodel.infer.embed import embed_texts
from bigmodel.model.transformer import Transformer

INDEX_META = "index.json"


def build_index(model: Transformer, tok: Tokenizer, docs: list[str], out: str | Path, ckpt: str,
                max_length: int = 256) -> Path:
    """embeddings.npy, docs.jsonl and index.json (which checkpoint embedded them) in `out`."""
    if not docs:
        raise BigModelError("no documents to index")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "embeddings.npy", embed_texts(model, tok, docs, max_length=max_length))
    with (out / "docs.jsonl").open("w", encoding="utf-8") as fh:
        for i, doc in enumerate(docs):
            fh.write(json.dumps({"id": i, "text": doc}, ensure_ascii=False) + "\n")
    (out / INDEX_META).write_text(json.dumps({"ckpt": ckpt, "max_length": max_length, "count": len(docs)}))
    return out


def open_index(folder: str | Path) -> tuple[dict, np.ndarray, list[str]]:
    folder = Path(folder)
    if not (folder / INDEX_META).is_file():
        raise BigModelError(f"{folder}: not an index (no {INDEX_META}; build one with `bigmodel index`)")
    meta = json.loads((folder / INDEX_META).read_text())
    docs = [json.loads(line)["text"] for line in (folder / "docs.jsonl").read_text(encoding="utf-8").splitlines()]
    return meta, np.load(folder / "embeddings.npy"), docs


def top_k(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine scores of each query's `k` nearest documents, best first."""
    scores = queries @ docs.T
    k = min(k, scores.shape[1])
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, best, 1).argsort(axis=1)[:, ::-1]
    best = np.take_along_axis(best, order, 1)
    return best, np.take_along_axis(scores, best, 1)
