"""Task heads on top of the Transformer: one vector per sequence, then a linear layer; or,
for extractive question answering and CTC speech recognition, a linear layer per position
(answer start and end scores; each audio frame's character scores).

Encoders pool by the attention-masked mean of their last hidden states (what sentence
encoders such as MiniLM were trained for); decoders take their last real token, the only
one that has seen the whole text; a ViT reads its [CLS] vector (`first`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from bigmodel.config import ModelConfig
from bigmodel.model.transformer import Transformer

HEAD_FILE = "head.json"


def pooling_for(config: ModelConfig) -> str:
    """How a new head reads a sequence: ViT's [CLS] patch, a decoder's last token (the only one that has
    seen them all), else the mean."""
    return "first" if config.frontend == "patches" else "last" if config.causal else "mean"


@dataclass
class HeadConfig:
    task: str = "classify"  # classify | regress | qa | ctc
    labels: list[str] = field(default_factory=list)  # class names in output order; ctc: blank, then characters
    pooling: str = "mean"  # mean | last | first

    @property
    def n_outputs(self) -> int:
        return {"classify": len(self.labels), "ctc": len(self.labels), "qa": 2}.get(self.task, 1)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> HeadConfig:
        return cls(**json.loads(text))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The average of the hidden states (B, T, C) over the real tokens `mask` marks."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class SequenceModel(nn.Module):
    """A backbone `Transformer` and a head that turns a whole sequence into scores."""

    def __init__(self, backbone: Transformer, head: HeadConfig, dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.config: ModelConfig = backbone.config  # what checkpoints record as model.json
        self.head_config = head
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(backbone.config.n_embd, head.n_outputs)  # not "head": peft matches suffixes

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Scores (B, n_outputs) for right-padded `ids` (or pixels, or waveforms) whose real positions
        `mask` marks; for QA and CTC, (B, T, n_outputs): scores at every position."""
        hidden = self.backbone.hidden_states(ids, padding_mask=mask)
        if self.head_config.task in ("qa", "ctc"):
            return self.classifier(self.dropout(hidden))
        if self.head_config.pooling == "first":
            pooled = hidden[:, 0]
        elif self.head_config.pooling == "last":
            pooled = hidden[torch.arange(len(ids), device=ids.device), mask.sum(1) - 1]
        else:
            pooled = mean_pool(hidden, mask)
        return self.classifier(self.dropout(pooled))
