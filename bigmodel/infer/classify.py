"""Running a fine-tuned `SequenceModel`: read the inputs (texts, images or audio), batch by length, score."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from bigmodel.data.inputs import Inputs, Source, batches, inputs_for
from bigmodel.device import autocast
from bigmodel.model.heads import HeadConfig


@torch.no_grad()
def predict_scores(model: torch.nn.Module, items: list, inputs: Inputs, n_outputs: int,
                   dtype: str = "fp32", batch_size: int = 64) -> torch.Tensor:
    """Raw head outputs (on the CPU) for every item, in input order; the model's train/eval mode is kept."""
    training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.zeros(len(items), n_outputs)
    for rows in batches(items, inputs, batch_size):
        x, mask = inputs.batch([items[i] for i in rows], device)
        with autocast(dtype, device):
            out[rows] = model(x, mask).float().cpu()
    model.train(training)
    return out


def predict_inputs(model: torch.nn.Module, tok: Tokenizer | None, sources: list[Source], max_length: int = 512
                   ) -> torch.Tensor:
    """Head outputs for raw texts (or image/WAV paths or bytes, for those models), in input order."""
    inputs = inputs_for(model.config, tok, max_length)
    return predict_scores(model, inputs.read(sources), inputs, model.head_config.n_outputs)


def label_records(model: torch.nn.Module, tok: Tokenizer | None, sources: list[Source]) -> list[dict]:
    """Label and probabilities (or value, for regression) per text, image or clip, in input order."""
    head = model.head_config
    if not sources:
        return []
    return score_records(head, predict_inputs(model, tok, sources))


def score_records(head: HeadConfig, scores: torch.Tensor) -> list[dict]:
    """Head outputs as records: label and probabilities per row, or the value of a regression head."""
    if head.task == "regress":
        return [{"value": s[0].item()} for s in scores]
    return [{"label": head.labels[int(s.argmax())], "probabilities": dict(zip(head.labels, s.softmax(-1).tolist(),
                                                                                strict=True))} for s in scores]
