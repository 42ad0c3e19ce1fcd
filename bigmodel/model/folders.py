"""The files of a checkpoint folder, and which folder a path names (a checkpoint, or a run's best/ or last/).

Kept apart from `checkpoint.py` so that the registry, which `checkpoint.py` asks for `models:/` paths,
can find folders without importing it back."""

from __future__ import annotations

from pathlib import Path

from bigmodel.errors import BigModelError

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model.json"
RUN_CONFIG = "config.yaml"
TOKENIZER = "tokenizer.json"
TRAINER_STATE = "trainer_state.pt"
SHARDS = "shards"  # FSDP: weights and optimizer state as torch.distributed.checkpoint shards
MANIFEST = "manifest.json"


def resolve_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """A checkpoint folder itself, or a run folder's `best/` (then `last/`).

    A folder left as `X.old` by a kill between the two renames counts as `X`.
    """
    p = Path(path)
    if (p / WEIGHTS).is_file() and (p / MODEL_CONFIG).is_file():
        return p
    order = [prefer, "last" if prefer == "best" else "best"]
    for name in order:
        for candidate in (p / name, p / f"{name}.old"):
            if (candidate / WEIGHTS).is_file():
                return candidate
    if not p.exists():
        raise BigModelError(f"{path}: no such checkpoint folder")
    raise BigModelError(f"{path}: not a checkpoint ({WEIGHTS} and {MODEL_CONFIG}) nor a run folder with best/ or last/")
