"""`bigmodel evaluate`: a checkpoint's figures on a file, for the task its head (or `--task`) names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from bigmodel.config import (
    CkptConfig,
    DecodingConfig,
    GenerateConfig,
    LabelColumnsConfig,
    LexiconConfig,
    PairColumnsConfig,
    PrecisionConfig,
    resolve,
)
from bigmodel.errors import BigModelError
from bigmodel.recipes.common import input_length, keep_figures, lexicon_settings, load, write_results


@dataclass
class EvaluateConfig(PrecisionConfig, CkptConfig, LabelColumnsConfig, PairColumnsConfig, LexiconConfig,
                     DecodingConfig):
    """`bigmodel evaluate`: LM perplexity; classifier, seq2seq, QA, zero-shot, retrieval or CTC figures."""

    data: str = ""  # prepared folder or text (lm); labelled file or media folder; source/target rows; SQuAD JSON
    # (qa); asr: a speech table (audio or path, text, optional language), paths relative to it
    task: Literal["lm", "classify", "seq2seq", "qa", "zeroshot", "retrieval", "ctc", "asr", "chat"] = "lm"
    split: str = "val"  # split of a prepared folder
    json: str = ""  # also write the figures to this JSON file
    out: str = "runs/evaluate"  # where metrics.json (and outputs.jsonl, confusion.png) go
    hypothesis_column: str = ""  # seq2seq: score this column instead of a model (a baseline)
    memory: str = ""  # seq2seq: score a translation memory of this file's source/target pairs instead (a baseline)
    bleu_tokenize: str = ""  # seq2seq: sacrebleu's tokenizer (default: zh when the references are Chinese, else 13a)
    max_examples: int = 0  # seq2seq, chat, asr: the first N rows of --data (0: all)
    labels: str = ""  # zeroshot: VALUE[=DESCRIPTION],... e.g. 0=negative,1=positive
    template: str = "{}"  # zeroshot: how a label description is phrased
    max_length: int | None = None  # tokens of input kept (default: tuning length, else 512); lm: scoring window
    max_new_tokens: int = 64  # seq2seq: tokens of each target at most
    temperature: float = 0.0  # seq2seq, chat: 0 is greedy, a target's most likely form
    chat_template: str = ""  # chat: a Jinja file instead of the model's own template
    baseline: str = ""  # chat: an earlier --out on the same --data; prints the change and its p-value
    required: ClassVar[tuple[str, ...]] = ("data",)


def cmd_evaluate(args: EvaluateConfig) -> None:
    tasks = {"classify": evaluate_classifier, "seq2seq": evaluate_seq2seq, "qa": evaluate_qa,
             "zeroshot": evaluate_zeroshot, "retrieval": evaluate_retrieval, "ctc": evaluate_transcripts,
             "asr": evaluate_speech,
             "chat": evaluate_chat}
    if not args.ckpt and not (args.task == "seq2seq" and (args.hypothesis_column or args.memory)):
        raise BigModelError("evaluate needs --ckpt (or, for --task seq2seq, --hypothesis-column to score a column "
                            "or --memory FILE to score a translation memory)")
    if args.task in tasks:
        return tasks[args.task](args)
    from bigmodel.evaluate.lm import evaluate_lm

    model, tok, folder = load(args)
    report = evaluate_lm(model, tok, args.data, args.split, args.max_length)
    print(f"{report.source}: loss {report.loss:.4f} | perplexity {report.perplexity:.3f} | "
          f"bits/byte {report.bits_per_byte:.4f} | {report.tokens:,} tokens, {report.bytes:,} bytes "
          f"| checkpoint {folder}")
    if report.unknown_chars:
        print(f"note: {report.unknown_chars} characters are not in the tokenizer's vocabulary "
              f"(e.g. {report.unknown_examples}); they were scored as <|unk|>")
    write_results(args, report.to_dict())


def labelled_inputs(args: EvaluateConfig, model, tok):
    """The model's reader and the (text or file path, label) rows of --data, for its modality."""
    from bigmodel.data.inputs import inputs_for
    from bigmodel.data.labelled import read_labelled
    from bigmodel.data.media import media_examples

    inputs = inputs_for(model.config, tok)
    if inputs.kind == "text":
        return inputs, read_labelled(args.data, args.text_column, args.label_column)
    return inputs, media_examples(args.data, inputs.suffixes, args.text_column, args.label_column)


def evaluate_classifier(args: EvaluateConfig) -> None:
    from bigmodel.data.labelled import label_indices
    from bigmodel.evaluate.classify import classification_metrics, plot_confusion, report_text
    from bigmodel.infer.classify import predict_scores

    model, tok, folder = load(args, with_head=True)
    labels = model.head_config.labels
    inputs, examples = labelled_inputs(args, model, tok)
    y_true = label_indices([e.label for e in examples], labels, args.data)
    scores = predict_scores(model, inputs.read([e.text for e in examples]), inputs, len(labels))
    y_pred = scores.argmax(-1).tolist()
    figures = classification_metrics(y_true, y_pred, labels)
    out = write_results(args, figures)
    keep_figures(folder, "evaluation", {"data": args.data, "examples": len(examples),
                                        "accuracy": figures["accuracy"], "macro_f1": figures["macro_f1"]})
    plot_confusion(figures["confusion_matrix"], labels, out / "confusion.png", f"{folder} on {Path(args.data).name}")
    print(report_text(y_true, y_pred, labels))
    print(f"accuracy {figures['accuracy']:.4f} | macro-F1 {figures['macro_f1']:.4f} | "
          f"{len(examples)} examples | {out / 'metrics.json'}, {out / 'confusion.png'}")


def evaluate_speech(args: EvaluateConfig) -> None:
    """Whisper on a speech table: WER and CER after Whisper's normaliser and raw, and each file's own. Rows
    with a `language` decode in it; rows in a language the model cannot transcribe are left out (counted)."""
    from bigmodel.data.media import speech_rows
    from bigmodel.evaluate.asr import asr_figures, file_wer
    from bigmodel.recipes.speech import table_transcripts, whisper_of

    model, tok, folder = load(args, decoding=True)
    vocab = whisper_of(model, tok, folder, args.ckpt)
    rows = speech_rows(args.data, args.source_column, args.target_column)[:args.max_examples or None]
    pairs, other = table_transcripts(model, tok, vocab, rows)
    languages = [row["language"] or heard["language"] for row, heard in pairs]
    references, hypotheses = [row["text"] for row, _ in pairs], [heard["text"] for _, heard in pairs]
    figures = {**asr_figures(references, hypotheses, languages), "recordings": len(pairs),
               "unreadable": len(rows) - other - len(pairs), "other_languages": other,
               "audio_seconds": round(sum(heard["duration"] for _, heard in pairs), 1)}
    outputs = [{"audio": row["audio"], "language": language, "reference": row["text"], "transcript": heard["text"],
                "wer": file_wer(row["text"], heard["text"], language)}
               for (row, heard), language in zip(pairs, languages, strict=True)]
    out = write_results(args, figures, outputs)
    keep_figures(folder, "asr", {"data": args.data, "recordings": len(pairs), "wer": figures["wer"]})
    print(f"WER {figures['wer']:.2f}% | CER {figures['cer']:.2f}% (Whisper's normaliser) | raw WER "
          f"{figures['wer_raw']:.2f}% | {len(pairs)} recordings, {figures['audio_seconds']} s"
          + (f" | {other} in other languages left out" if other else "")
          + f" | {out / 'metrics.json'}, {out / 'outputs.jsonl'}")


def evaluate_transcripts(args: EvaluateConfig) -> None:
    """CTC speech recognition: CER and WER (jiwer) of greedy transcripts against --data's transcripts."""
    from bigmodel.data.inputs import AudioInputs
    from bigmodel.data.media import media_examples
    from bigmodel.evaluate.seq2seq import error_rates
    from bigmodel.infer.ctc import normalize, transcribe

    model, _, folder = load(args, with_head=True)
    if model.head_config.task != "ctc":
        raise BigModelError(f"{folder}: not a speech recognizer (its head is {model.head_config.task!r})")
    inputs = AudioInputs(model.config)
    examples = media_examples(args.data, inputs.suffixes, args.source_column, args.target_column)
    hypotheses = transcribe(model, inputs.read([e.text for e in examples]), inputs, **lexicon_settings(args, model))
    references = [normalize(e.label) for e in examples]
    figures = {**error_rates(references, hypotheses), "examples": len(examples)}
    out = write_results(args, figures, [{"audio": e.text, "reference": ref, "transcript": hyp}
                                        for e, hyp, ref in zip(examples, hypotheses, references, strict=True)])
    print(f"CER {figures['cer']:.2f}% | WER {figures['wer']:.2f}% | exact {figures['exact_match']:.1f}% | "
          f"{len(examples)} clips | {out / 'metrics.json'}, {out / 'outputs.jsonl'}")


def evaluate_seq2seq(args: EvaluateConfig) -> None:
    """BLEU, chrF, ROUGE-L, CER, WER (and placeholders kept) of generated targets, of an existing column, or of
    a translation memory's lookups: the baselines."""
    from bigmodel.data.labelled import read_columns
    from bigmodel.evaluate.seq2seq import memory_translations, seq2seq_scores

    columns = [args.source_column, args.target_column, *([args.hypothesis_column] if args.hypothesis_column else [])]
    rows = read_columns(args.data, columns)[:args.max_examples or None]
    sources = [r[0] for r in rows]
    if args.hypothesis_column:
        hypotheses, source = [r[2] for r in rows], f"column {args.hypothesis_column!r}"
    elif args.memory:
        pairs = read_columns(args.memory, [args.source_column, args.target_column])
        hypotheses, source = memory_translations(pairs, sources), f"translation memory of {args.memory}"
    else:
        from bigmodel.infer.seq2seq import generate_targets

        model, tok, folder = load(args)
        cfg = resolve(GenerateConfig, args)
        hypotheses = generate_targets(model, tok, sources, cfg, input_length(args, model, folder), progress=True)
        source = str(folder)
    figures = {**seq2seq_scores(hypotheses, [r[1] for r in rows], sources, args.bleu_tokenize),
               "examples": len(rows), "model": source}
    out = write_results(args, figures, [{"source": r[0], "reference": r[1], "output": h}
                                        for r, h in zip(rows, hypotheses, strict=True)])
    kept = f" | placeholders kept {figures['placeholders_kept']:.1f}%" if "placeholders_kept" in figures else ""
    print(f"BLEU {figures['bleu']:.2f} ({figures['bleu_tokenize']}) | chrF {figures['chrf']:.2f} | ROUGE-L "
          f"{figures['rouge_l']:.2f} | CER {figures['cer']:.2f}% | WER {figures['wer']:.2f}% | exact "
          f"{figures['exact_match']:.1f}%{kept} | {len(rows)} examples | {source} | {out / 'outputs.jsonl'}")


def evaluate_chat(args: EvaluateConfig) -> None:
    """Each conversation's last assistant turn generated from the turns before it (through the model's
    template) and scored against it: exact match and chrF, over all and per `task` field."""
    from bigmodel.evaluate.seq2seq import compare_replies, reply_scores
    from bigmodel.infer.chat import replies
    from bigmodel.tasks.chat import read_conversations

    model, tok, folder = load(args, decoding=True)
    conversations = read_conversations(args.data, preference=False)[:args.max_examples or None]
    for c in conversations:
        if c.messages[-1]["role"] != "assistant":
            raise BigModelError(f"{args.data}: line {c.line}: the last turn must be the assistant's (the reference)")
    references = [c.messages[-1]["content"] for c in conversations]
    baseline = baseline_replies(args.baseline, references) if args.baseline else None  # before minutes of decoding
    hypotheses = replies(model, tok, folder, [c.messages[:-1] for c in conversations], resolve(GenerateConfig, args),
                         args.chat_template)
    scores = reply_scores(hypotheses, references, [c.task for c in conversations])
    figures = {**scores.pop("all"), "tasks": scores, "model": str(folder)}
    if baseline is not None:
        figures["versus"] = {"baseline": args.baseline, **compare_replies(hypotheses, baseline, references)}
    out = write_results(args, figures, [{"line": c.line, "task": c.task, "reference": r, "output": h}
                                        for c, r, h in zip(conversations, references, hypotheses, strict=True)])
    per_task = "".join(f" | {name}: exact {s['exact_match']:.1f}%, chrF {s['chrf']:.2f}" for name, s in scores.items())
    print(f"exact {figures['exact_match']:.1f}% | chrF {figures['chrf']:.2f}{per_task} | {len(conversations)} "
          f"conversations | {folder} | {out / 'outputs.jsonl'}")
    if baseline is not None:
        v = figures["versus"]
        print(f"against {args.baseline}: chrF {v['chrf_change']:+.2f} (paired bootstrap p = {v['chrf_p']:.3f}) | "
              f"exact {v['exact_change']:+.1f} points ({v['exact_gained']} more right, {v['exact_lost']} fewer; "
              f"McNemar p = {v['exact_p']:.2g})")


def baseline_replies(folder: str, references: list[str]) -> list[str]:
    """The replies of an earlier `evaluate --task chat --out FOLDER`, which must answer the same references."""
    from bigmodel.data.labelled import read_rows

    path = Path(folder) / "outputs.jsonl"
    if not path.is_file():
        raise BigModelError(f"--baseline {folder}: no outputs.jsonl (an earlier `evaluate --task chat --out`)")
    rows = [row for _, row in read_rows(path)]
    if [row.get("reference") for row in rows] != references:
        raise BigModelError(f"--baseline {path}: its {len(rows)} references are not the {len(references)} of --data "
                            "(evaluate both on the same file and --max-examples)")
    return [row["output"] for row in rows]


def evaluate_qa(args: EvaluateConfig) -> None:
    """SQuAD exact match and F1 on a SQuAD-format file."""
    from bigmodel.data.squad import read_squad
    from bigmodel.evaluate.qa import squad_scores
    from bigmodel.infer.qa import answer_questions

    model, tok, folder = load(args, with_head=True)
    if model.head_config.task != "qa":
        raise BigModelError(f"{folder}: a {model.head_config.task} head, not a QA one (finetune --task qa)")
    questions = read_squad(args.data, need_answers=True)
    found = answer_questions(model, tok, questions, input_length(args, model, folder))
    figures = {**squad_scores([f[0] for f in found], [q.answers for q in questions]), "questions": len(questions)}
    out = write_results(args, figures, [{"id": q.id, "question": q.question, "answers": q.answers, "output": f[0]}
                                        for q, f in zip(questions, found, strict=True)])
    print(f"exact match {figures['exact_match']:.2f} | F1 {figures['f1']:.2f} | {len(questions)} questions | "
          f"{folder} | {out / 'outputs.jsonl'}")


def evaluate_zeroshot(args: EvaluateConfig) -> None:
    """Accuracy and macro-F1 of zero-shot labels against a labelled file, beside the majority class."""
    from collections import Counter

    from bigmodel.data.labelled import read_labelled
    from bigmodel.evaluate.classify import classification_metrics, report_text
    from bigmodel.infer.zeroshot import label_similarities, parse_labels

    values, descriptions = parse_labels(args.labels or "")
    examples = read_labelled(args.data, args.text_column, args.label_column)
    unknown = sorted({e.label for e in examples} - set(values))
    if unknown:
        raise BigModelError(f"{args.data}: labels missing from --labels: {', '.join(map(repr, unknown[:5]))}")
    model, tok, folder = load(args)
    sims = label_similarities(model, tok, [e.text for e in examples], descriptions, args.template,
                              input_length(args, model, folder))
    y_true, y_pred = [values.index(e.label) for e in examples], sims.argmax(1).tolist()
    figures = classification_metrics(y_true, y_pred, values)
    figures["majority_class_accuracy"] = Counter(y_true).most_common(1)[0][1] / len(y_true)
    write_results(args, figures)
    print(report_text(y_true, y_pred, values))
    print(f"zero-shot accuracy {figures['accuracy']:.4f} | macro-F1 {figures['macro_f1']:.4f} | majority class "
          f"{figures['majority_class_accuracy']:.4f} | {len(examples)} examples | {folder}")


def evaluate_retrieval(args: EvaluateConfig) -> None:
    """Recall@1/5/10 and MRR@10: each query's own document among all the file's documents."""
    from bigmodel.data.labelled import read_columns
    from bigmodel.evaluate.retrieval import recall_at
    from bigmodel.infer.embed import embed_texts

    rows = read_columns(args.data, [args.source_column, args.target_column])
    model, tok, folder = load(args)
    length = input_length(args, model, folder)
    queries = embed_texts(model, tok, [r[0] for r in rows], max_length=length)
    figures = {**recall_at(queries, embed_texts(model, tok, [r[1] for r in rows], max_length=length)),
               "queries": len(rows)}
    write_results(args, figures)
    print(f"recall@1 {figures['recall_at_1']:.4f} | recall@5 {figures['recall_at_5']:.4f} | recall@10 "
          f"{figures['recall_at_10']:.4f} | MRR@10 {figures['mrr_at_10']:.4f} | {len(rows)} queries | {folder}")
