"""Classification figures with scikit-learn: accuracy, macro-F1, the per-class report and a
confusion-matrix PNG, all also as JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from bigmodel.model.heads import HeadConfig


def classification_metrics(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict:
    ids = list(range(len(labels)))
    return {
        "accuracy": accuracy_score(y_true, y_pred),
        "macro_f1": f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0),
        "report": classification_report(y_true, y_pred, labels=ids, target_names=labels, output_dict=True,
                                        zero_division=0),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def head_scores(head: HeadConfig, scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """What a label head is judged by: accuracy and macro-F1 for classification, MSE for regression."""
    if head.task == "regress":
        return {"mse": F.mse_loss(scores.squeeze(-1), targets.float()).item()}
    figures = classification_metrics(targets.tolist(), scores.argmax(-1).tolist(), head.labels)
    return {"accuracy": figures["accuracy"], "macro_f1": figures["macro_f1"]}


def report_text(y_true: list[int], y_pred: list[int], labels: list[str]) -> str:
    return classification_report(y_true, y_pred, labels=list(range(len(labels))), target_names=labels, digits=4,
                                 zero_division=0)


def plot_confusion(matrix: list[list[int]], labels: list[str], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = 3 + 0.5 * len(labels)
    fig, ax = plt.subplots(figsize=(size, size), dpi=110)
    ConfusionMatrixDisplay(confusion_matrix=np.array(matrix), display_labels=labels).plot(
        ax=ax, cmap="Blues", colorbar=False)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
