"""The MLflow "model from code" a logged checkpoint loads through (`mlflow.pyfunc.load_model`).

MLflow runs this file at load time instead of unpickling an object. `predict` takes a list of texts
(or image/WAV paths, for those models): a classifier gives label and probabilities per text, a
language model its continuation as `text` (`params`: max_new_tokens, temperature).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
from mlflow.models import set_model


class CheckpointModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from bigmodel.model.checkpoint import HEAD_FILE, load_checkpoint
        from bigmodel.model.registry import ARTEFACT

        folder = context.artifacts[ARTEFACT]
        with_head = (Path(folder) / HEAD_FILE).is_file()
        self.model, self.tok, _ = load_checkpoint(folder, "cpu", with_head=with_head)
        self.classifier = with_head

    def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> list[dict]:
        texts = list(model_input)
        if self.classifier:
            from bigmodel.infer.classify import label_records

            return label_records(self.model, self.tok, texts)
        from bigmodel.config import GenerateConfig
        from bigmodel.infer.generate import generate_texts

        cfg = GenerateConfig(**{k: v for k, v in (params or {}).items() if k in ("max_new_tokens", "temperature")})
        return [{"text": generate_texts(self.model, self.tok, text, cfg)[0]} for text in texts]


set_model(CheckpointModel())
