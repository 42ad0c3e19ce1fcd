"""Zero-shot classification with a sentence encoder: each label's description is embedded
(through a template such as "This review is {}."), and a text takes the label whose
embedding is nearest by cosine; with several labels allowed, every label above a threshold."""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

from bigmodel.errors import BigModelError
from bigmodel.infer.embed import embed_texts
from bigmodel.model.transformer import Transformer


def parse_labels(spec: str) -> tuple[list[str], list[str]]:
    """`"positive,negative"` or `"1=positive,0=negative"` → (label values, descriptions)."""
    values, descriptions = [], []
    for part in spec.split(","):
        value, _, description = part.strip().partition("=")
        if not value.strip() or (_ and not description.strip()):
            raise BigModelError(f"--labels {spec!r}: each label needs a name (VALUE or VALUE=DESCRIPTION)")
        values.append(value.strip())
        descriptions.append(description.strip() or value.strip())
    if len(values) < 2 or len(set(values)) != len(values):
        raise BigModelError(f"--labels {spec!r}: give at least two different labels, separated by commas")
    return values, descriptions


def label_similarities(model: Transformer, tok: Tokenizer, texts: list[str], descriptions: list[str],
                       template: str = "{}", max_length: int = 256) -> np.ndarray:
    """Cosine similarity (N, L) of each text with each label description put in `template`."""
    if "{}" not in template:
        raise BigModelError(f"--template {template!r} needs a {{}} where the label goes")
    if model.config.causal or model.config.encoder_layers:
        raise BigModelError("zero-shot classification needs an encoder checkpoint (such as minilm)")
    labels = embed_texts(model, tok, [template.format(d) for d in descriptions], max_length=max_length)
    return embed_texts(model, tok, texts, max_length=max_length) @ labels.T
