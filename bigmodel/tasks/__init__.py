"""One task per head, used by every stage: fine-tuning's loop and keep-best, the federated server, the
sweep's metric and direction. Each module declares its reader, head, loss and evaluation (whose
figures come from `bigmodel.evaluate`).

- `classify` / `regress` (`label.py`): a pooled head over a sentence, an image or a clip.
- `seq2seq`: a target text from a source text (encoder-decoder, or decoder-only `source <|endoftext|> target`).
- `qa`: answer spans in SQuAD JSON. `retrieval`: contrastive query/document embeddings.
- `ctc`: speech to characters. `asr`: Whisper on a speech table.
- `chat` / `dpo` (`chat.py`): conversations through the model's chat template; preference pairs.
"""

from __future__ import annotations

from tokenizers import Tokenizer

from bigmodel.config import FinetuneConfig
from bigmodel.errors import BigModelError
from bigmodel.model.transformer import Transformer
from bigmodel.tasks.asr import ASRTask
from bigmodel.tasks.base import Task
from bigmodel.tasks.chat import ChatTask, DPOTask
from bigmodel.tasks.ctc import CTCTask
from bigmodel.tasks.label import LabelTask
from bigmodel.tasks.qa import QATask
from bigmodel.tasks.retrieval import RetrievalTask
from bigmodel.tasks.seq2seq import Seq2SeqTask

TASKS: dict[str, type[Task]] = {"classify": LabelTask, "regress": LabelTask, "seq2seq": Seq2SeqTask,
                                "qa": QATask, "retrieval": RetrievalTask, "ctc": CTCTask, "asr": ASRTask,
                                "chat": ChatTask, "dpo": DPOTask}
GOALS = {**{name: (cls.metric, cls.minimize) for name, cls in TASKS.items()}, **LabelTask.GOALS}
"""Per task: the figure that picks the best checkpoint (and a sweep's default), and whether lower is better."""
LOWER_IS_BETTER = {"val_loss", "train_loss", "wer", *(m for m, lower in GOALS.values() if lower)}


def make_task(cfg: FinetuneConfig, backbone: Transformer, tok: Tokenizer | None, special: dict | None = None
              ) -> Task:
    """The task `cfg.task` names; `special` is the model's `tokenizer_config.json` (its chat template)."""
    if cfg.task not in ("classify", "regress", "seq2seq", "asr") and backbone.config.encoder_layers:
        raise BigModelError(f"--task {cfg.task} needs an encoder or a decoder, not an encoder-decoder")
    if issubclass(TASKS[cfg.task], ChatTask):
        return TASKS[cfg.task](cfg, backbone, tok, special or {})
    return TASKS[cfg.task](cfg, backbone, tok)
