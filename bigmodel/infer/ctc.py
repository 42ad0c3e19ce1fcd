"""Speech to text with a CTC head: per-frame character scores → the best character per frame,
repeats merged, blanks dropped (greedy decoding)."""

from __future__ import annotations

import torch

from bigmodel.data.inputs import AudioInputs, batches

BLANK = "<blank>"  # output 0: "no new character here"


def normalize(text: str) -> str:
    """What transcripts are compared as: lower case, single spaces."""
    return " ".join(text.lower().split())


def greedy_decode(scores: torch.Tensor, length: int, alphabet: list[str]) -> str:
    """The transcript of one clip's (frames, characters) scores over its first `length` frames."""
    best = scores[:length].argmax(-1).tolist()
    return "".join(alphabet[b] for i, b in enumerate(best) if b != 0 and (i == 0 or b != best[i - 1]))


@torch.no_grad()
def transcribe(model: torch.nn.Module, waves: list[torch.Tensor], inputs: AudioInputs, dtype: str = "fp32",
               batch_size: int = 32) -> list[str]:
    """A transcript per waveform, in input order; the model's train/eval mode is kept."""
    training = model.training
    model.eval()
    device = next(model.parameters()).device
    alphabet = model.head_config.labels
    out = [""] * len(waves)
    for rows in batches(waves, inputs, batch_size):
        x, mask = inputs.batch([waves[i] for i in rows], device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            scores = model(x, mask).float().cpu()
        for row, i in enumerate(rows):
            out[i] = greedy_decode(scores[row], int(mask[row].sum()), alphabet)
    model.train(training)
    return out
