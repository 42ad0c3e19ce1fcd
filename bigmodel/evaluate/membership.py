"""A privacy audit: can an attacker tell the examples a model was trained on from ones it never saw?

The loss-threshold membership-inference attack (Yeom et al., 2018) guesses "member" when the
model's loss on an example is low. Its ROC AUC over training examples (members) and held-out
ones (non-members) is 0.5 for a model that leaks nothing about membership; the true-positive rate
at a 1% false-positive rate says how many members an attacker can name almost without error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from tokenizers import Tokenizer

from bigmodel.data.inputs import TextInputs
from bigmodel.data.labelled import Example, label_indices
from bigmodel.infer.classify import predict_scores
from bigmodel.model.heads import SequenceModel


@dataclass
class AuditReport:
    members: int
    non_members: int
    auc: float
    tpr_at_1pct_fpr: float
    member_loss: float  # mean loss on the training examples
    non_member_loss: float

    def to_dict(self) -> dict:
        return asdict(self)


def example_losses(model: SequenceModel, tok: Tokenizer, examples: list[Example], max_length: int = 512
                   ) -> np.ndarray:
    """The model's loss on each labelled example (cross-entropy, or squared error for a regressor)."""
    head = model.head_config
    inputs = TextInputs(tok, min(max_length, model.config.block_size))
    scores = predict_scores(model, inputs.read([e.text for e in examples]), inputs, head.n_outputs)
    if head.task == "regress":
        targets = torch.tensor([float(e.label) for e in examples])
        return ((scores[:, 0] - targets) ** 2).numpy()
    targets = torch.tensor(label_indices([e.label for e in examples], head.labels, "the audited files"))
    return torch.nn.functional.cross_entropy(scores, targets, reduction="none").numpy()


def loss_attack(member_losses: np.ndarray, non_member_losses: np.ndarray) -> tuple[AuditReport, np.ndarray,
                                                                                      np.ndarray]:
    """The attack's figures and its ROC curve (false-positive rates, true-positive rates)."""
    truth = np.r_[np.ones(len(member_losses)), np.zeros(len(non_member_losses))]
    score = -np.r_[member_losses, non_member_losses]  # lower loss: more likely a member
    fpr, tpr, _ = roc_curve(truth, score)
    report = AuditReport(len(member_losses), len(non_member_losses), float(roc_auc_score(truth, score)),
                         float(tpr[fpr <= 0.01].max()), float(member_losses.mean()), float(non_member_losses.mean()))
    return report, fpr, tpr


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, report: AuditReport, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.plot(fpr, tpr, label=f"loss attack (AUC {report.auc:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="no leakage (AUC 0.5)")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
