"""What the verbs that load a checkpoint share: the model on its device and format, the input length
it was tuned at, and where figures are written."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bigmodel.config import (
    CkptConfig,
    LexiconConfig,
    StorageConfig,
    resolve,
)
from bigmodel.data.readers import input_lines, read_lines
from bigmodel.data.tokenizer import batched
from bigmodel.errors import BigModelError


def storage(args: StorageConfig | Any):
    """How `--encrypt-key-env` and `--no-verify` say checkpoints are read and written."""
    from bigmodel.model.checkpoint import Storage

    return Storage.of(resolve(StorageConfig, None, args))


def input_batches(name: str, tok: Any, size: int = 64) -> Iterator[list[str]]:
    """The lines of `--input` in batches as they are read, blank ones kept, so output row i answers line i;
    a blank line the model reads no token in (a tokenizer without special tokens) is an error naming it."""
    for first, lines in enumerate(batched(input_lines(name), size)):
        for lineno, line in enumerate(lines, start=first * size + 1):
            if not line.strip() and tok is not None and not tok.encode(line).ids:
                raise BigModelError(f"{name}: line {lineno} is blank, and this model reads no token in a blank "
                                    "text; remove the line or give it text")
        yield lines


def write_jsonl(path: str, batches: Iterable[list[dict]]) -> None:
    """Records as JSON lines to `path` (standard output when empty), flushed batch by batch: a reader at
    the other end of a pipe sees each batch as soon as it is computed."""
    with open(path, "w", encoding="utf-8") if path else contextlib.nullcontext(sys.stdout) as out:
        for batch in batches:
            out.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in batch)
            out.flush()


def load(args: CkptConfig, with_head: bool = False, ckpt: str | None = None, decoding: bool = False):
    """The model, tokenizer and folder `--ckpt` (or `ckpt`) names, on the device `--device` picks, in the
    number format `--dtype` picks (verbs that have it) for batches of whole windows, or for `decoding`
    one token at a time."""
    from bigmodel.device import pick_device
    from bigmodel.model.checkpoint import in_precision, load_checkpoint

    device = pick_device(args.device)
    model, tok, folder = load_checkpoint(ckpt or args.ckpt, device, with_head=with_head, storage=storage(args))
    if getattr(args, "dtype", None):
        model = in_precision(model, args.dtype, device, decoding)
    return model, tok, folder


def input_length(args: Any, model, folder) -> int:
    """`--max-length`, else the length the checkpoint was fine-tuned at (else 512), within the context."""
    from bigmodel.model.checkpoint import read_sections

    length = args.max_length
    if length is None:
        sections = read_sections(folder, storage(args)) if (folder / "config.yaml").is_file() else {}
        length = (sections.get("finetune") or {}).get("max_length", 512)
    return min(length, model.config.block_size)


def write_results(args: Any, figures: dict, outputs: list[dict] | None = None) -> Path:
    """metrics.json (and outputs.jsonl) in `--out`; the figures also to `--json` when asked."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(figures, indent=2, ensure_ascii=False))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, ensure_ascii=False))
    if outputs is not None:
        with (out / "outputs.jsonl").open("w", encoding="utf-8") as fh:
            for row in outputs:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def lexicon_settings(args: LexiconConfig, model) -> dict:
    """`transcribe`'s keyword arguments for `--lexicon` (none: greedy decoding)."""
    if not args.lexicon:
        return {}
    from bigmodel.data.labelled import read_columns
    from bigmodel.infer.ctc import WordModel

    path = Path(args.lexicon)
    if path.suffix.lower() == ".txt":
        texts = read_lines(args.lexicon, "lexicon")
    else:
        texts = [row[0] for row in read_columns(path, [args.lexicon_column])]
    words = WordModel.from_texts(texts, model.head_config.labels)
    if not words.counts:
        raise BigModelError(f"--lexicon {args.lexicon}: no word spelled in the model's characters")
    return {"words": words, "beam": args.beam_width, "lm_weight": args.lm_weight, "word_bonus": args.word_bonus}


def keep_figures(folder: Path, kind: str, figures: dict) -> None:
    """Record a measurement beside a bigmodel checkpoint, where `bigmodel card` and the registry's gates
    read it; imported Hugging Face folders and GGUF files are left untouched."""
    from bigmodel.evaluate.card import record
    from bigmodel.model.folders import RUN_CONFIG

    if (folder / RUN_CONFIG).is_file():
        record(folder, kind, figures)
