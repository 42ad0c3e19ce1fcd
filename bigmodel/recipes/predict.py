"""`bigmodel predict`: JSONL per input: a label, an answer span, a transcript or a target text."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Literal

from bigmodel.config import (
    CkptConfig,
    DecodingConfig,
    GenerateConfig,
    LexiconConfig,
    PrecisionConfig,
    resolve,
)
from bigmodel.errors import BigModelError
from bigmodel.recipes.common import input_batches, input_length, lexicon_settings, load, write_jsonl


@dataclass
class PredictConfig(PrecisionConfig, CkptConfig, LexiconConfig, DecodingConfig):
    """`bigmodel predict`: a label and probabilities, an answer span, a transcript or a target text, as JSONL
    (a Whisper checkpoint: what `transcribe --format json` writes)."""

    input: str = ""  # UTF-8 text file, one text per line, or - for stdin; QA: SQuAD JSON or JSONL
    out: str = ""  # JSONL file to write (default: stdout)
    task: Literal["auto", "seq2seq"] = "auto"  # auto: by the checkpoint; seq2seq: a decoder fine-tuned so
    max_length: int | None = None  # tokens of input kept (default: the checkpoint's fine-tuning length, else 512)
    max_new_tokens: int = 64  # seq2seq: tokens of each target at most
    temperature: float = 0.0  # seq2seq: 0 is greedy, a target's most likely form
    required: ClassVar[tuple[str, ...]] = ("ckpt", "input")


def cmd_predict(args: PredictConfig) -> None:
    """JSONL per input: a label (or value) with probabilities, an answer span (QA), or a target text (seq2seq)."""
    from bigmodel.model.checkpoint import HEAD_FILE, locate

    folder, from_hf = locate(args.ckpt)
    headed = not from_hf and (folder / HEAD_FILE).is_file()
    model, tok, folder = load(args, with_head=headed)
    if not headed and args.task != "seq2seq" and not model.config.encoder_layers:
        raise BigModelError(f"{args.ckpt}: no fine-tuned head to predict with (for a decoder-only seq2seq model, "
                            "pass --task seq2seq)")
    if model.config.source == "mel":  # Whisper: what `transcribe --format json` writes, as JSONL
        from bigmodel.recipes.speech import SpeechConfig, audio_inputs, transcribed, whisper_of

        records = transcribed(model, tok, whisper_of(model, tok, folder, args.ckpt), audio_inputs(args.input),
                              SpeechConfig())
        batches = ([record] for record in records)
    elif not headed:
        batches = predict_seq2seq(model, tok, args, input_length(args, model, folder))
    elif model.head_config.task == "qa":
        batches = iter([predict_answers(model, tok, args, input_length(args, model, folder))])
    elif model.config.frontend != "tokens":
        batches = iter([predict_media(model, args)])
    else:
        from bigmodel.infer.classify import label_records

        batches = ([{"text": t, **r} for t, r in zip(texts, label_records(model, tok, texts), strict=True)]
                   for texts in input_batches(args.input, tok))
    write_jsonl(args.out, batches)


def predict_media(model, args: PredictConfig) -> list[dict]:
    """Images or WAV files (one file, a folder, or a list of paths): a label, or a transcript (CTC)."""
    from bigmodel.data.inputs import inputs_for, media_files
    from bigmodel.infer.classify import label_records
    from bigmodel.infer.ctc import transcribe

    inputs = inputs_for(model.config, None)
    files = media_files(args.input, inputs)
    if model.head_config.task == "ctc":
        transcripts = transcribe(model, inputs.read(files), inputs, **lexicon_settings(args, model))
        return [{"input": f, "transcript": t} for f, t in zip(files, transcripts, strict=True)]
    return [{"input": f, **r} for f, r in zip(files, label_records(model, None, files), strict=True)]


def predict_seq2seq(model, tok, args: PredictConfig, max_length: int) -> Iterator[list[dict]]:
    """A target per input line, batch by batch as the lines are read."""
    from bigmodel.infer.seq2seq import generate_targets

    cfg = resolve(GenerateConfig, args)
    for sources in input_batches(args.input, tok):
        outputs = generate_targets(model, tok, sources, cfg, max_length)
        yield [{"source": s, "output": o} for s, o in zip(sources, outputs, strict=True)]


def read_questions(path: str) -> list:
    """SQuAD-format JSON, or JSONL lines with `question` and `context`."""
    from bigmodel.data.labelled import read_columns
    from bigmodel.data.squad import Question, read_squad

    if path.endswith(".json"):
        return read_squad(path, need_answers=False)
    return [Question(str(i), q, c) for i, (q, c) in enumerate(read_columns(path, ["question", "context"]))]


def predict_answers(model, tok, args: PredictConfig, max_length: int) -> list[dict]:
    from bigmodel.infer.qa import answer_questions

    questions = read_questions(args.input)
    found = answer_questions(model, tok, questions, max_length)
    return [{"id": q.id, "question": q.question, "answer": text, "start": start, "end": end, "score": score}
            for q, (text, start, end, score) in zip(questions, found, strict=True)]
