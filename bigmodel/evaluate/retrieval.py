"""Retrieval figures: where each query's own document ranks among all the documents."""

from __future__ import annotations

import numpy as np

from bigmodel.infer.retrieval import top_k


def recall_at(queries: np.ndarray, docs: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k and MRR@10 when query i's relevant document is document i."""
    best, _ = top_k(queries, docs, max(ks))
    hit = best == np.arange(len(queries))[:, None]
    rank = np.where(hit.any(1), hit.argmax(1) + 1, 0)
    figures = {f"recall_at_{k}": float(hit[:, :k].any(1).mean()) for k in ks}
    figures["mrr_at_10"] = float(np.where((rank > 0) & (rank <= 10), 1.0 / np.maximum(rank, 1), 0.0).mean())
    return figures
