"""`bigmodel VERB [flags]`: each verb parses flags into config dataclasses and calls one function.

Errors meant for users (`BigModelError`) print as one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

from bigmodel.config import (
    DTYPES,
    DataConfig,
    FederatedConfig,
    FinetuneConfig,
    GenerateConfig,
    ModelConfig,
    ServeConfig,
    StorageConfig,
    TrainConfig,
    add_flags,
    load_yaml,
    resolve,
)
from bigmodel.errors import BigModelError, require


def storage(args: argparse.Namespace):
    """How `--encrypt-key-env` and `--no-verify` say checkpoints are read and written."""
    from bigmodel.model.checkpoint import Storage

    return Storage.of(resolve(StorageConfig, None, args))


def load(args: argparse.Namespace, with_head: bool = False, ckpt: str | None = None, decoding: bool = False):
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


def cmd_prepare(args: argparse.Namespace) -> None:
    from bigmodel.data.prepare import prepare

    cfg = resolve(DataConfig, load_yaml(args.config).get("data"), args)
    if not cfg.input:
        raise BigModelError("prepare needs --input PATH [PATH ...]")
    meta = prepare(cfg)
    clean = meta["cleaning"]
    print(f"wrote {cfg.out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
          f"({meta['dtype']}), vocabulary {meta['vocab_size']:,}")
    print(f"documents: {clean['documents_in']:,} read, {clean['documents_kept']:,} kept, "
          f"{clean['duplicates_dropped']:,} duplicates and {clean['empty_dropped']:,} empty dropped, "
          f"{clean['control_chars_removed']:,} control characters removed")
    if "pii_replaced" in clean:
        print("personal data replaced: " + ", ".join(f"{k} {v}" for k, v in clean["pii_replaced"].items()))


def pretrain_configs(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig, dict]:
    """Layer defaults < preset < YAML < flags; a resumed run starts from its saved config."""
    from bigmodel.model.checkpoint import RUN_CONFIG, read_sections
    from bigmodel.train.trainer import layered_configs

    recipe = load_yaml(args.config)
    if args.resume and args.out and (Path(args.out) / "last" / RUN_CONFIG).is_file():
        recipe = {**read_sections(Path(args.out) / "last", storage(args)), "preset": None}
    return layered_configs(recipe, args, args.preset)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from bigmodel.train.trainer import pretrain

    model, train, sections = pretrain_configs(args)
    result = pretrain(model, train, sections)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for all
        return
    if result:
        print(f"done: val loss {result['val_loss']:.4f} at iteration {int(result['iter'])}; "
              f"checkpoints in {train.out}/best and {train.out}/last")
    if train.dp_epsilon is not None:
        from bigmodel.model.checkpoint import Storage
        from bigmodel.train import privacy

        print(privacy.summary(Path(train.out), Storage.of(train)))


def cmd_evaluate(args: argparse.Namespace) -> None:
    tasks = {"classify": evaluate_classifier, "seq2seq": evaluate_seq2seq, "qa": evaluate_qa,
             "zeroshot": evaluate_zeroshot, "retrieval": evaluate_retrieval, "ctc": evaluate_transcripts}
    if not args.ckpt and not (args.task == "seq2seq" and args.hypothesis_column):
        raise BigModelError("evaluate needs --ckpt (or, for --task seq2seq, --hypothesis-column to score a column)")
    if args.task in tasks:
        return tasks[args.task](args)
    from bigmodel.evaluate.lm import evaluate_lm

    model, tok, folder = load(args)
    report = evaluate_lm(model, tok, args.data, args.split)
    print(f"{report.source}: loss {report.loss:.4f} | perplexity {report.perplexity:.3f} | "
          f"bits/byte {report.bits_per_byte:.4f} | {report.tokens:,} tokens, {report.bytes:,} bytes "
          f"| checkpoint {folder}")
    if report.unknown_chars:
        print(f"note: {report.unknown_chars} characters are not in the tokenizer's vocabulary "
              f"(e.g. {report.unknown_examples}); they were scored as <|unk|>")
    write_results(args, report.to_dict())


def labelled_inputs(args: argparse.Namespace, model, tok):
    """The model's reader and the (text or file path, label) rows of --data, for its modality."""
    from bigmodel.data.inputs import inputs_for
    from bigmodel.data.labelled import read_labelled
    from bigmodel.data.media import media_examples

    inputs = inputs_for(model.config, tok)
    if inputs.kind == "text":
        return inputs, read_labelled(args.data, args.text_column, args.label_column)
    return inputs, media_examples(args.data, inputs.suffixes, args.text_column, args.label_column)


def evaluate_classifier(args: argparse.Namespace) -> None:
    from bigmodel.evaluate.classify import classification_metrics, plot_confusion, report_text
    from bigmodel.infer.classify import predict_scores

    model, tok, folder = load(args, with_head=True)
    labels = model.head_config.labels
    inputs, examples = labelled_inputs(args, model, tok)
    unknown = sorted({e.label for e in examples} - set(labels))
    if unknown:
        raise BigModelError(f"{args.data}: labels the model was not trained on: {', '.join(map(repr, unknown[:5]))}")
    y_true = [labels.index(e.label) for e in examples]
    scores = predict_scores(model, inputs.read([e.text for e in examples]), inputs, len(labels))
    y_pred = scores.argmax(-1).tolist()
    figures = classification_metrics(y_true, y_pred, labels)
    out = write_results(args, figures)
    plot_confusion(figures["confusion_matrix"], labels, out / "confusion.png", f"{folder} on {Path(args.data).name}")
    print(report_text(y_true, y_pred, labels))
    print(f"accuracy {figures['accuracy']:.4f} | macro-F1 {figures['macro_f1']:.4f} | "
          f"{len(examples)} examples | {out / 'metrics.json'}, {out / 'confusion.png'}")


def evaluate_transcripts(args: argparse.Namespace) -> None:
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


def input_length(args: argparse.Namespace, model, folder) -> int:
    """`--max-length`, else the length the checkpoint was fine-tuned at (else 512), within the context."""
    from bigmodel.model.checkpoint import read_sections

    length = args.max_length
    if length is None:
        sections = read_sections(folder, storage(args)) if (folder / "config.yaml").is_file() else {}
        length = (sections.get("finetune") or {}).get("max_length", 512)
    return min(length, model.config.block_size)


SEQ2SEQ_DEFAULTS = {"temperature": 0.0, "max_new_tokens": 64}  # a target is short, and its most likely form wanted


def write_results(args: argparse.Namespace, figures: dict, outputs: list[dict] | None = None) -> Path:
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


def evaluate_seq2seq(args: argparse.Namespace) -> None:
    """BLEU, chrF, ROUGE-L, CER, WER of generated targets (or of an existing column: a baseline)."""
    from bigmodel.data.labelled import read_columns
    from bigmodel.evaluate.seq2seq import seq2seq_scores

    columns = [args.source_column, args.target_column, *([args.hypothesis_column] if args.hypothesis_column else [])]
    rows = read_columns(args.data, columns)
    if args.hypothesis_column:
        hypotheses, source = [r[2] for r in rows], f"column {args.hypothesis_column!r}"
    else:
        from bigmodel.infer.seq2seq import generate_targets

        model, tok, folder = load(args)
        cfg = resolve(GenerateConfig, SEQ2SEQ_DEFAULTS, args)
        hypotheses = generate_targets(model, tok, [r[0] for r in rows], cfg, input_length(args, model, folder),
                                      progress=True)
        source = str(folder)
    figures = {**seq2seq_scores(hypotheses, [r[1] for r in rows]), "examples": len(rows), "model": source}
    out = write_results(args, figures, [{"source": r[0], "reference": r[1], "output": h}
                                        for r, h in zip(rows, hypotheses, strict=True)])
    print(f"BLEU {figures['bleu']:.2f} | chrF {figures['chrf']:.2f} | ROUGE-L {figures['rouge_l']:.2f} | "
          f"CER {figures['cer']:.2f}% | WER {figures['wer']:.2f}% | exact {figures['exact_match']:.1f}% | "
          f"{len(rows)} examples | {source} | {out / 'outputs.jsonl'}")


def evaluate_qa(args: argparse.Namespace) -> None:
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


def evaluate_zeroshot(args: argparse.Namespace) -> None:
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


def evaluate_retrieval(args: argparse.Namespace) -> None:
    """Recall@1/5/10 and MRR@10: each query's own document among all the file's documents."""
    from bigmodel.data.labelled import read_columns
    from bigmodel.infer.embed import embed_texts
    from bigmodel.infer.retrieval import recall_at

    rows = read_columns(args.data, [args.source_column, args.target_column])
    model, tok, folder = load(args)
    length = input_length(args, model, folder)
    queries = embed_texts(model, tok, [r[0] for r in rows], max_length=length)
    figures = {**recall_at(queries, embed_texts(model, tok, [r[1] for r in rows], max_length=length)),
               "queries": len(rows)}
    write_results(args, figures)
    print(f"recall@1 {figures['recall_at_1']:.4f} | recall@5 {figures['recall_at_5']:.4f} | recall@10 "
          f"{figures['recall_at_10']:.4f} | MRR@10 {figures['mrr_at_10']:.4f} | {len(rows)} queries | {folder}")


def cmd_zeroshot(args: argparse.Namespace) -> None:
    """JSONL per input line: the nearest label (or every label over --threshold) and each label's cosine."""
    from bigmodel.infer.zeroshot import label_similarities, parse_labels

    values, descriptions = parse_labels(args.labels)
    texts = read_lines(args.input)
    model, tok, _ = load(args)
    sims = label_similarities(model, tok, texts, descriptions, args.template, args.max_length) if texts else []
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    for text, row in zip(texts, sims, strict=True):
        record = {"text": text, "scores": {v: round(float(x), 4) for v, x in zip(values, row, strict=True)}}
        if args.multi_label:
            record["labels"] = [v for v, x in zip(values, row, strict=True) if x >= args.threshold]
        else:
            record["label"] = values[int(row.argmax())]
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    if args.out:
        out.close()


def cmd_index(args: argparse.Namespace) -> None:
    from bigmodel.data.labelled import read_columns
    from bigmodel.infer.retrieval import build_index

    suffix = Path(args.input).suffix.lower()
    docs = [r[0] for r in read_columns(args.input, [args.text_column])] if suffix in (".jsonl", ".csv", ".tsv") \
        else read_lines(args.input)
    model, tok, _ = load(args)
    out = build_index(model, tok, docs, args.out, args.ckpt, args.max_length)
    print(f"wrote {out}: {len(docs)} documents embedded by {args.ckpt}")


def cmd_search(args: argparse.Namespace) -> None:
    from bigmodel.infer.embed import embed_texts
    from bigmodel.infer.retrieval import open_index, top_k

    meta, vectors, docs = open_index(args.index)
    queries = read_lines(args.query_file, "query") if args.query_file else [args.query] if args.query else []
    if not queries:
        raise BigModelError("search needs --query TEXT or --query-file FILE")
    model, tok, _ = load(args, ckpt=args.ckpt or meta["ckpt"])
    found, scores = top_k(embed_texts(model, tok, queries, max_length=meta["max_length"]), vectors, args.top_k)
    for query, ids, sims in zip(queries, found, scores, strict=True):
        hits = [{"id": int(i), "score": round(float(x), 4), "text": docs[i]} for i, x in zip(ids, sims, strict=True)]
        print(json.dumps({"query": query, "hits": hits}, ensure_ascii=False))


def cmd_dataset(args: argparse.Namespace) -> None:
    from bigmodel.data.builtin_tasks import build

    counts = build(args.name, args.out, args.source, args.examples)
    print(f"wrote {args.out}: " + ", ".join(f"{split} {n:,}" for split, n in counts.items()))


def read_lines(name: str, what: str = "input") -> list[str]:
    """The non-blank lines of a UTF-8 file, or of standard input for `-`."""
    if name == "-":
        return [line.rstrip("\n") for line in sys.stdin if line.strip()]
    path = Path(name)
    if not path.is_file():
        raise BigModelError(f"{path}: no such {what} file")
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise BigModelError(f"{path}: not valid UTF-8") from None


def cmd_predict(args: argparse.Namespace) -> None:
    """JSONL per input: a label (or value) with probabilities, an answer span (QA), or a target text (seq2seq)."""
    from bigmodel.model.checkpoint import HEAD_FILE, locate

    folder, from_hf = locate(args.ckpt)
    headed = not from_hf and (folder / HEAD_FILE).is_file()
    model, tok, folder = load(args, with_head=headed)
    if not headed and args.task != "seq2seq" and not model.config.encoder_layers:
        raise BigModelError(f"{args.ckpt}: no fine-tuned head to predict with (for a decoder-only seq2seq model, "
                            "pass --task seq2seq)")
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        if not headed:
            records = predict_seq2seq(model, tok, args, input_length(args, model, folder))
        elif model.head_config.task == "qa":
            records = predict_answers(model, tok, args, input_length(args, model, folder))
        elif model.config.frontend != "tokens":
            records = predict_media(model, args)
        else:
            from bigmodel.infer.classify import label_records

            texts = read_lines(args.input)
            records = [{"text": t, **r} for t, r in zip(texts, label_records(model, tok, texts), strict=True)]
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        if args.out:
            out.close()


def add_lexicon_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lexicon", help="speech recognizers: decode against the words of these transcripts (a "
                        ".txt of lines, or a CSV/TSV/JSONL and --lexicon-column), with a word bigram model of them")
    parser.add_argument("--lexicon-column", default="text", help="the transcripts' column (default: text)")
    parser.add_argument("--beam-width", type=int, default=128, help="lexicon decoding's beam (default 128)")
    parser.add_argument("--lm-weight", type=float, default=0.8, help="weight of the word bigram log-probability")
    parser.add_argument("--word-bonus", type=float, default=2.5, help="score added per word (longer transcripts)")


def lexicon_settings(args: argparse.Namespace, model) -> dict:
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


def predict_media(model, args: argparse.Namespace) -> list[dict]:
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


def predict_seq2seq(model, tok, args: argparse.Namespace, max_length: int) -> list[dict]:
    from bigmodel.infer.seq2seq import generate_targets

    sources = read_lines(args.input)
    cfg = resolve(GenerateConfig, SEQ2SEQ_DEFAULTS, args)
    outputs = generate_targets(model, tok, sources, cfg, max_length)
    return [{"source": s, "output": o} for s, o in zip(sources, outputs, strict=True)]


def read_questions(path: str) -> list:
    """SQuAD-format JSON, or JSONL lines with `question` and `context`."""
    from bigmodel.data.labelled import read_columns
    from bigmodel.data.squad import Question, read_squad

    if path.endswith(".json"):
        return read_squad(path, need_answers=False)
    return [Question(str(i), q, c) for i, (q, c) in enumerate(read_columns(path, ["question", "context"]))]


def predict_answers(model, tok, args: argparse.Namespace, max_length: int) -> list[dict]:
    from bigmodel.infer.qa import answer_questions

    questions = read_questions(args.input)
    found = answer_questions(model, tok, questions, max_length)
    return [{"id": q.id, "question": q.question, "answer": text, "start": start, "end": end, "score": score}
            for q, (text, start, end, score) in zip(questions, found, strict=True)]


def _prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt_file:
        prompts = [line.replace("\\n", "\n") for line in read_lines(args.prompt_file, "prompt")]
        if not prompts:
            raise BigModelError(f"{args.prompt_file}: holds no prompts")
        return prompts
    if args.prompt is None:
        raise BigModelError("generate needs --prompt TEXT or --prompt-file FILE")
    return [args.prompt]


def cmd_generate(args: argparse.Namespace) -> None:
    import torch

    from bigmodel.infer.generate import generate_texts, stream_text

    cfg = resolve(GenerateConfig, args, {"temperature": 0.0} if args.greedy else None)
    prompts = _prompts(args)
    model, tok, _ = load(args, decoding=True)
    if model.config.encoder_layers:  # the prompt is a source; the output its target
        from bigmodel.infer.seq2seq import generate_targets

        for prompt, target in zip(prompts, generate_targets(model, tok, prompts, cfg), strict=True):
            print(target if len(prompts) == 1 else f"{prompt}\t{target}")
        return
    generator = torch.Generator(next(model.parameters()).device).manual_seed(cfg.seed)
    for i, prompt in enumerate(prompts):
        if len(prompts) > 1:
            print(f"=== prompt {i + 1} ===", flush=True)
        if cfg.num_samples == 1:
            sys.stdout.write(prompt)
            for piece in stream_text(model, tok, prompt, cfg, generator):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            for j, text in enumerate(generate_texts(model, tok, prompt, cfg)):
                print(f"--- sample {j + 1} ---\n{prompt}{text}")
        sys.stdout.flush()


def cmd_convert(args: argparse.Namespace) -> None:
    from bigmodel.model.checkpoint import save_checkpoint
    from bigmodel.model.hf import find_hf_folder, from_hf, read_hf_tokenizer

    source = find_hf_folder(args.from_hf)
    model = from_hf(source)
    save_checkpoint(Path(args.out), model, read_hf_tokenizer(source), {"converted_from": str(source.resolve())},
                    storage=storage(args))
    for name in ("tokenizer_config.json", "chat_template.jinja"):  # where `serve` finds a chat template
        if (source / name).is_file():
            shutil.copy(source / name, Path(args.out) / name)
    print(f"wrote {args.out}: {model.num_params() / 1e6:.1f}M parameters from {source}")


def cmd_export(args: argparse.Namespace) -> None:
    from bigmodel.model.hf import to_hf

    model, tok, folder = load(args)
    family = to_hf(model, args.to_hf, tok)
    print(f"wrote {args.to_hf} from {folder}: load it with transformers' {family}.from_pretrained")


def cmd_finetune(args: argparse.Namespace) -> None:
    from bigmodel.model.checkpoint import Storage
    from bigmodel.train import privacy
    from bigmodel.train.finetune import finetune

    recipe = load_yaml(args.config)
    cfg = resolve(FinetuneConfig, recipe.get("finetune"), args)
    best = finetune(cfg, ModelConfig.from_dict(recipe["model"]) if recipe.get("model") else None)
    if best:  # a resumed run that had already finished evaluates nothing new
        figures = ("accuracy", "macro_f1", "mse", "val_loss", "token_accuracy", "exact_match", "f1", "recall_at_1",
                   "cer", "wer")
        shown = ", ".join(f"{k} {v:.4f}" for k, v in best.items() if k in figures)
        print(f"best: {shown} at step {int(best['step'])}; checkpoint in {cfg.out}/best")
    if cfg.dp_epsilon is not None:
        print(privacy.summary(Path(cfg.out), Storage.of(cfg)))


def cmd_embed(args: argparse.Namespace) -> None:
    import numpy as np

    from bigmodel.infer.embed import embed_texts

    texts = read_lines(args.input)
    if not texts:
        raise BigModelError(f"{args.input}: holds no lines to embed")
    model, tok, _ = load(args)
    vectors = embed_texts(model, tok, texts, args.batch_size, args.max_length)
    np.save(args.out, vectors)
    print(f"wrote {args.out}: {vectors.shape[0]} vectors of {vectors.shape[1]} dimensions")


def compress_checkpoint(args: argparse.Namespace, change, what: str) -> None:
    """Load, measure, `change` the model in place (or return a new one), save, measure again."""
    from bigmodel.evaluate.lm import evaluate_lm
    from bigmodel.model.checkpoint import WEIGHTS, save_checkpoint

    model, tok, folder = load(args)
    before = evaluate_lm(model, tok, args.text)
    model = change(model) or model
    save_checkpoint(Path(args.out), model, tok, {"compressed_from": str(folder.resolve()), "compression": what},
                    storage=storage(args))
    after = evaluate_lm(load(args, ckpt=args.out)[0], tok, args.text)
    size_before, size_after = (folder / WEIGHTS).stat().st_size, (Path(args.out) / WEIGHTS).stat().st_size
    change_pct = 100 * (after.perplexity / before.perplexity - 1)
    print(f"{what}: weights {size_before / 1e6:.2f} MB -> {size_after / 1e6:.2f} MB; perplexity on {args.text} "
          f"{before.perplexity:.4f} -> {after.perplexity:.4f} ({change_pct:+.2f}%)")


def cmd_quantize(args: argparse.Namespace) -> None:
    from bigmodel.infer.compress import to_bf16
    from bigmodel.model.quantize import to_int8

    methods = {"bf16": (to_bf16, "bf16 weights"), "int8": (to_int8, "dynamic int8 linear layers")}
    change, what = methods[args.method]
    compress_checkpoint(args, change, what)


def cmd_prune(args: argparse.Namespace) -> None:
    from bigmodel.infer.compress import prune_magnitude

    compress_checkpoint(args, lambda m: prune_magnitude(m, args.sparsity), f"{args.sparsity:.0%} magnitude pruning")


def cmd_serve(args: argparse.Namespace) -> None:
    for module in ("fastapi", "uvicorn"):
        require(module, "serve", "serving")
    from bigmodel.serve.app import create_app, serve

    cfg = resolve(ServeConfig, load_yaml(args.config).get("serve"), args)
    if not cfg.ckpt:
        raise BigModelError("serve needs --ckpt DIR (or `ckpt:` under `serve:` in --config)")
    if cfg.ckpt.startswith("models:/"):
        from bigmodel.model.registry import fetch

        cfg = dataclasses.replace(cfg, ckpt=str(fetch(cfg.ckpt, cfg.tracking_uri)))
    app = create_app(cfg)
    print(f"bigmodel serve: http://{cfg.host}:{cfg.port}/v1 (model loading; /health answers 200 when ready)",
          file=sys.stderr, flush=True)
    serve(app, cfg)
    if app.state.service.failure:
        raise BigModelError(f"{cfg.ckpt}: {app.state.service.failure}")


def cmd_explain(args: argparse.Namespace) -> None:
    require("captum", "explain", "explaining")
    from bigmodel.infer.explain import explain_classifier, explain_next_token, faithfulness
    from bigmodel.infer.report import terminal_view, write_report
    from bigmodel.model.checkpoint import locate
    from bigmodel.model.heads import HEAD_FILE

    if args.steps < 2:
        raise BigModelError("--steps must be at least 2")
    folder, is_hf = locate(args.ckpt)
    classifier = not is_hf and (folder / HEAD_FILE).is_file()
    model, tok, _ = load(args, with_head=classifier)
    if not classifier and not model.config.causal:
        raise BigModelError(f"{args.ckpt}: an encoder without a fine-tuned head has nothing to explain; "
                            "fine-tune it (`bigmodel finetune`) or give a decoder checkpoint")
    out = Path(args.out)
    if model.config.frontend != "tokens":
        return explain_images(args, model, out)
    if args.evaluate:
        if not classifier:
            raise BigModelError(f"{args.ckpt}: --evaluate measures a fine-tuned classifier (no {HEAD_FILE} here)")
        if not args.data:
            raise BigModelError("--evaluate needs --data FILE (CSV/TSV/JSONL with --text-column)")
        from bigmodel.data.labelled import read_labelled

        texts = [e.text for e in read_labelled(args.data, args.text_column, args.label_column)]
        report = faithfulness(model, tok, texts[:args.max_examples or None], baseline=args.baseline, steps=args.steps)
        out.mkdir(parents=True, exist_ok=True)
        (out / "faithfulness.json").write_text(json.dumps(report, indent=2))
        print(f"faithfulness on {report['texts']['count']} texts of {args.data} (probability drop of the predicted "
              "class; comprehensiveness: higher is better, sufficiency: lower is better)")
        for k in (10, 20, 50):
            ig, rnd = report["integrated_gradients"], report["random"]
            print(f"top {k:>2}%: comprehensiveness {ig[f'comprehensiveness@{k}']:.4f} (random "
                  f"{rnd[f'comprehensiveness@{k}']:.4f}) | sufficiency {ig[f'sufficiency@{k}']:.4f} (random "
                  f"{rnd[f'sufficiency@{k}']:.4f})")
        print(f"figures: {out / 'faithfulness.json'}")
        return
    texts = [args.text] if args.text is not None else read_lines(args.input) if args.input else []
    if not texts:
        raise BigModelError("explain needs --text TEXT, --input FILE (or - for stdin), or --evaluate --data FILE")
    for i, text in enumerate(texts, start=1):
        if classifier:
            explanation = explain_classifier(model, tok, text, args.target, args.baseline, args.steps)
        else:
            explanation = explain_next_token(model, tok, text, args.baseline, args.steps)
        paths = write_report(explanation, out / str(i) if len(texts) > 1 else out)
        print(terminal_view(explanation))
        print(f"IG sum {sum(explanation.integrated_gradients):+.4f} vs score change {explanation.logit_difference:+.4f}"
              f" (delta {explanation.convergence_delta:+.1e}); report {paths['html']}")


def explain_images(args: argparse.Namespace, model, out: Path) -> None:
    """A ViT classifier: rollout PNGs for --input images, or the deletion check over --data."""
    from bigmodel.data.inputs import ImageInputs, media_files
    from bigmodel.infer.explain_image import deletion_check, patch_rollout, probabilities, rollout_figure

    if model.config.frontend != "patches" or not hasattr(model, "head_config"):
        raise BigModelError(f"{args.ckpt}: explanations cover text models and image classifiers, not audio yet")
    inputs = ImageInputs(model.config)
    labels = model.head_config.labels
    if args.evaluate:
        if not args.data:
            raise BigModelError("--evaluate needs --data (a folder of class sub-folders, or a CSV of paths)")
        images = inputs.read(media_files(args.data, inputs))[:args.max_examples or None]
        report = deletion_check(model, images)
        out.mkdir(parents=True, exist_ok=True)
        (out / "deletion.json").write_text(json.dumps({"images": len(images), **report}, indent=2))
        print(f"probability drop of the predicted class on {len(images)} images of {args.data}, patches blanked "
              "(higher: those patches mattered)")
        for k in (10, 25, 50):
            print(f"top {k:>2}% by rollout {report[f'rollout@{k}']:.4f} | random {report[f'random@{k}']:.4f}")
        print(f"figures: {out / 'deletion.json'}")
        return
    if not args.input:
        raise BigModelError("explain needs --input IMAGE (a file, a folder, or a list of paths), or --evaluate --data")
    files = media_files(args.input, inputs)
    for i, (path, image) in enumerate(zip(files, inputs.read(files), strict=True), start=1):
        probs = probabilities(model, image[None])[0]
        label = labels[int(probs.argmax())]
        png = out / (f"{i}_rollout.png" if len(files) > 1 else "rollout.png")
        rollout_figure(image, patch_rollout(model, image), f"{Path(path).name}: {label} ({probs.max():.2f})", png)
        print(f"{path}: {label} (p={probs.max():.3f}) | rollout {png}")


def cmd_federated(args: argparse.Namespace) -> None:
    from bigmodel.federated.launch import run_federated
    from bigmodel.train.track import read_metrics

    recipe = load_yaml(args.config)
    fed = resolve(FederatedConfig, recipe.get("federated"), args)
    local = resolve(FinetuneConfig, recipe.get("finetune"), args)
    out = run_federated(fed, local)
    rows = [r for r in read_metrics(out / "metrics.csv") if r["round"] > 0]
    if not rows:
        raise BigModelError(f"{out}: no round completed; Flower's logs are in {out / 'flower' / 'logs'}")
    best = max(rows, key=lambda r: -r["mse"] if "mse" in r else r["accuracy"])
    shown = f"mse {best['mse']:.4f}" if "mse" in best else f"accuracy {best['accuracy']:.4f}"
    print(f"{int(rows[-1]['round'])} rounds; best global {shown} after round {int(best['round'])}; "
          f"checkpoints in {out}/best and {out}/last; per-client figures in {out}/clients.csv")


def cmd_sweep(args: argparse.Namespace) -> None:
    from bigmodel.train.sweep import Param, sweep

    if not args.config:
        raise BigModelError("sweep needs --config FILE: the recipe whose fields the trials vary")
    params = [Param.parse(text) for text in args.param]
    study = sweep(load_yaml(args.config), params, args.trials, Path(args.out), args.metric, args.track,
                  args.tracking_uri, args.seed)
    states = [t.state.name for t in study.trials]  # sweep() has checked that Optuna is installed
    print(f"{args.trials} trials: {states.count('COMPLETE')} complete, {states.count('PRUNED')} "
          f"pruned, {states.count('FAIL')} failed; best {study.user_attrs['metric']} {study.best_value:.4f} "
          f"(trial {study.best_trial.number}: {study.best_params})")
    print(f"best recipe {args.out}/best.yaml; plots {args.out}/history.png, {args.out}/importance.png; "
          f"study {args.out}/study.db")


def cmd_registry(args: argparse.Namespace) -> None:
    """register | list | alias: checkpoints as named, numbered versions in MLflow's registry."""
    import time

    from bigmodel.model import registry

    if args.action == "register":
        if not args.ckpt:
            raise BigModelError("registry register needs --ckpt DIR")
        v = registry.register(args.ckpt, args.name, args.alias, args.tracking_uri)
        alias = f" (models:/{v.name}@{args.alias})" if args.alias else ""
        where = registry.store_uri(args.tracking_uri)
        print(f"registered {args.ckpt} as models:/{v.name}/{v.version}{alias} in {where}")
    elif args.action == "alias":
        if not (args.version and args.alias):
            raise BigModelError("registry alias needs --version N and --alias NAME")
        registry.set_alias(args.name, args.version, args.alias, args.tracking_uri)
        print(f"models:/{args.name}@{args.alias} -> version {args.version}")
    else:
        for v in registry.versions(args.name, args.tracking_uri):
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created_ms / 1000))
            aliases = ", ".join(f"@{a}" for a in v.aliases) or "-"
            print(f"{v.name}/{v.version}\t{aliases}\t{when}\trun {v.run_id or '-'}\t{v.source}")


def cmd_audit(args: argparse.Namespace) -> None:
    from bigmodel.data.labelled import read_labelled
    from bigmodel.evaluate.membership import example_losses, loss_attack, plot_roc

    model, tok, folder = load(args, with_head=True)
    members = read_labelled(args.train, args.text_column, args.label_column)
    non_members = read_labelled(args.holdout, args.text_column, args.label_column)
    if args.max_examples:
        members, non_members = members[:args.max_examples], non_members[:args.max_examples]
    report, fpr, tpr = loss_attack(example_losses(model, tok, members), example_losses(model, tok, non_members))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(report.to_dict(), indent=2))
    plot_roc(fpr, tpr, report, out / "roc.png", f"membership inference on {folder}")
    print(f"loss attack on {report.members} training and {report.non_members} held-out examples: AUC {report.auc:.4f} "
          f"(0.5 = nothing leaks), TPR at 1% FPR {report.tpr_at_1pct_fpr:.4f}; mean loss {report.member_loss:.4f} "
          f"(train) vs {report.non_member_loss:.4f} (held out) | {out / 'audit.json'}, {out / 'roc.png'}")


def cmd_quickstart(args: argparse.Namespace) -> None:
    from bigmodel.recipes.quickstart import quickstart

    quickstart(Path(args.out), args.minutes, args.device)


def add_ckpt(parser: argparse.ArgumentParser, help: str = "checkpoint folder, or a run folder (uses best/)",
             required: bool = True, dtype: bool = False) -> None:
    """`--ckpt`, the `--device` to run it on and how it is stored, as every verb that loads a model takes them;
    `dtype`: also `--dtype` (verbs whose figures stay comparable across formats keep the checkpoint's)."""
    parser.add_argument("--ckpt", required=required, help=f"{help}; or a Hugging Face folder, or `minilm`")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    if dtype:
        parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bf16 where this device runs "
                            "it faster than fp32 (a short probe, cached), else fp32; a bf16 checkpoint stays bf16")
    add_flags(parser, StorageConfig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bigmodel", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("prepare", help="clean a corpus, train a tokenizer, write token shards")
    p.add_argument("--config", help="YAML recipe (its `data:` section)")
    add_flags(p, DataConfig)
    p.set_defaults(func=cmd_prepare)

    p = verbs.add_parser("pretrain", help="train a Transformer on a prepared folder")
    p.add_argument("--config", help="YAML recipe with `preset:`, `model:` and `train:` sections")
    p.add_argument("--preset", help="baby | small | gpt2 | gpt2-medium")
    add_flags(p, TrainConfig)
    add_flags(p, ModelConfig)
    p.set_defaults(func=cmd_pretrain)

    p = verbs.add_parser("evaluate", help="LM perplexity; classifier, seq2seq, QA, zero-shot or retrieval figures")
    add_ckpt(p, required=False, dtype=True)
    p.add_argument("--data", required=True, help="prepared folder or raw text file (lm); a labelled file (classify, "
                   "zeroshot) or, for images and audio, a folder of class sub-folders; source/target rows (seq2seq, "
                   "retrieval, ctc: WAV path and transcript); SQuAD JSON (qa)")
    p.add_argument("--task", default="lm", choices=("lm", "classify", "seq2seq", "qa", "zeroshot", "retrieval",
                                                            "ctc"))
    p.add_argument("--split", default="val", help="split of a prepared folder (default: val)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--source-column", default="source", help="seq2seq: the input; retrieval: the query")
    p.add_argument("--target-column", default="target", help="seq2seq: the reference; retrieval: the document")
    p.add_argument("--hypothesis-column", help="seq2seq: score this column instead of a model (a baseline)")
    p.add_argument("--labels", help="zeroshot: VALUE[=DESCRIPTION],... e.g. 0=negative,1=positive")
    p.add_argument("--template", default="{}", help="zeroshot: how a label description is phrased")
    p.add_argument("--max-length", type=int, help="tokens of input kept (default: the checkpoint's fine-tuning "
                   "length, else 512)")
    p.add_argument("--out", default="runs/evaluate", help="where metrics.json (and outputs.jsonl, confusion.png) go")
    add_flags(p, GenerateConfig, skip=("num_samples",))
    add_lexicon_flags(p)
    p.set_defaults(func=cmd_evaluate)

    p = verbs.add_parser("generate", help="continue a prompt, streaming the text")
    add_ckpt(p, dtype=True)
    p.add_argument("--prompt", help="text to continue")
    p.add_argument("--prompt-file", help="one prompt per line (write \\n for a newline inside one)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    add_flags(p, GenerateConfig)
    p.set_defaults(func=cmd_generate)

    p = verbs.add_parser("convert", help="turn a Hugging Face GPT-2 or BERT folder into a bigmodel checkpoint")
    p.add_argument("--from-hf", required=True,
                   help="folder with config.json, model.safetensors, tokenizer.json; or `minilm` (pip package)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    add_flags(p, StorageConfig)
    p.set_defaults(func=cmd_convert)

    p = verbs.add_parser("export", help="write a GPT-2, BERT or BART-shaped folder that transformers loads")
    add_ckpt(p)
    p.add_argument("--to-hf", required=True, help="folder to write")
    p.set_defaults(func=cmd_export)

    p = verbs.add_parser("finetune", help="train a pretrained model (or a new one from a recipe's model: "
                         "section): classify, regress, seq2seq, qa, retrieval, ctc")
    p.add_argument("--config", help="YAML recipe (its `finetune:` section)")
    add_flags(p, FinetuneConfig)
    p.set_defaults(func=cmd_finetune)

    p = verbs.add_parser("predict", help="label and probabilities, an answer span, or a target text, as JSONL")
    add_ckpt(p, "fine-tuned checkpoint folder or run folder", dtype=True)
    p.add_argument("--input", required=True, help="UTF-8 text file, one text per line, or - for stdin; "
                   "QA: SQuAD JSON or JSONL with question and context")
    p.add_argument("--out", help="JSONL file to write (default: stdout)")
    p.add_argument("--task", default="auto", choices=("auto", "seq2seq"),
                   help="auto: by the checkpoint (its head, or its encoder-decoder shape); seq2seq for a decoder-only "
                   "model fine-tuned with --task seq2seq")
    p.add_argument("--max-length", type=int, help="tokens of input kept (default: the checkpoint's fine-tuning "
                   "length, else 512)")
    add_flags(p, GenerateConfig, skip=("num_samples",))
    add_lexicon_flags(p)
    p.set_defaults(func=cmd_predict)

    p = verbs.add_parser("zeroshot", help="label texts with no training: nearest label description by embedding")
    add_ckpt(p, "encoder checkpoint folder (e.g. `minilm`)")
    p.add_argument("--labels", required=True, help="VALUE[=DESCRIPTION],... e.g. positive,negative")
    p.add_argument("--template", default="{}", help="how a label is phrased, e.g. \"This review is {}.\"")
    p.add_argument("--input", required=True, help="UTF-8 text file, one text per line, or - for stdin")
    p.add_argument("--out", help="JSONL file to write (default: stdout)")
    p.add_argument("--multi-label", action="store_true", help="every label whose cosine reaches --threshold")
    p.add_argument("--threshold", type=float, default=0.1, help="with --multi-label: the cosine a label needs")
    p.add_argument("--max-length", type=int, default=256)
    p.set_defaults(func=cmd_zeroshot)

    p = verbs.add_parser("index", help="embed documents into a search index folder")
    add_ckpt(p, "encoder checkpoint folder (e.g. `minilm`, or one fine-tuned with --task retrieval)")
    p.add_argument("--input", required=True, help="one document per line; or JSONL/CSV/TSV with --text-column")
    p.add_argument("--text-column", default="text")
    p.add_argument("--out", required=True, help="index folder to write")
    p.add_argument("--max-length", type=int, default=256, help="tokens of each document kept (default: 256)")
    p.set_defaults(func=cmd_index)

    p = verbs.add_parser("search", help="the documents of an index nearest to a query")
    p.add_argument("--index", required=True, help="folder written by `bigmodel index`")
    p.add_argument("--query", help="text to search for")
    p.add_argument("--query-file", help="one query per line")
    p.add_argument("--top-k", type=int, default=5)
    add_ckpt(p, "encoder that embeds the queries (default: the one that built the index)", required=False)
    p.set_defaults(func=cmd_search)

    p = verbs.add_parser("dataset", help="build a dataset from what every machine has (code, qa, pinyin; images: "
                         "digits; speech by espeak-ng: keywords, speech)")
    p.add_argument("name", choices=("code", "qa", "pinyin", "digits", "keywords", "speech"))
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--source", default="", help="pinyin: ChnSentiCorp's all.csv; speech: SST-2's train.tsv "
                   "(default: ../shared/data/...)")
    p.add_argument("--examples", type=int, default=0, help="keywords, speech: training clips to synthesize "
                   "(default 4000, 5000; val a tenth, test a quarter of that)")
    p.set_defaults(func=cmd_dataset)

    p = verbs.add_parser("embed", help="one mean-pooled, L2-normalised vector per input line (.npy)")
    add_ckpt(p, "checkpoint folder (e.g. from `convert --from-hf minilm`)")
    p.add_argument("--input", required=True, help="UTF-8 text file, one text per line")
    p.add_argument("--out", required=True, help=".npy file to write")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=256, help="tokens kept per line (default: 256)")
    p.set_defaults(func=cmd_embed)

    p = verbs.add_parser("quantize", help="int8 linear layers or bf16 weights; prints size and perplexity change")
    add_ckpt(p)
    p.add_argument("--out", required=True)
    p.add_argument("--method", choices=("int8", "bf16"), default="int8",
                   help="int8: dynamic int8 linear layers (torch.ao); bf16: every weight in bfloat16")
    p.add_argument("--text", required=True, help="prepared folder or text file to measure perplexity on")
    p.set_defaults(func=cmd_quantize)

    p = verbs.add_parser("prune", help="zero the smallest weights of each block matrix; prints the cost")
    add_ckpt(p)
    p.add_argument("--out", required=True)
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of each matrix set to zero (default 0.5)")
    p.add_argument("--text", required=True, help="prepared folder or text file to measure perplexity on")
    p.set_defaults(func=cmd_prune)

    p = verbs.add_parser("serve", help="OpenAI-compatible HTTP server (completions, chat, embeddings, classify)")
    p.add_argument("--config", help="YAML recipe (its `serve:` section)")
    add_flags(p, ServeConfig)
    p.set_defaults(func=cmd_serve)

    p = verbs.add_parser("federated", help="fine-tune over Flower: a SuperLink, one SuperNode per data owner")
    p.add_argument("--config", help="YAML recipe (its `federated:` and `finetune:` sections)")
    add_flags(p, FederatedConfig)
    add_flags(p, FinetuneConfig, skip=tuple(f.name for f in dataclasses.fields(FederatedConfig)))
    p.set_defaults(func=cmd_federated)

    p = verbs.add_parser("explain", help="why a model decided: token attributions, attention maps, faithfulness")
    add_ckpt(p, "fine-tuned classifier, or a decoder (explains its next token)")
    p.add_argument("--text", help="the text to explain")
    p.add_argument("--input", help="one text per line (- for stdin); each gets its own report folder. Image "
                   "classifiers: an image, a folder of them, or a file of paths (attention rollout PNGs)")
    p.add_argument("--target", help="label to explain (default: the predicted one)")
    p.add_argument("--baseline", default="pad", choices=("pad", "mask"),
                   help="integrated gradients' reference text: real tokens replaced by [PAD] or [MASK]")
    p.add_argument("--steps", type=int, default=50, help="integrated gradients' steps (default: 50)")
    p.add_argument("--out", default="runs/explain", help="where report.html, attention.png, explanation.json go")
    p.add_argument("--evaluate", action="store_true", help="measure faithfulness (ERASER) on --data instead")
    p.add_argument("--data", help="with --evaluate: labelled CSV/TSV/JSONL; images: a folder (deletion check)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-examples", type=int, default=0, help="with --evaluate: the first N rows (0: all)")
    p.set_defaults(func=cmd_explain)

    p = verbs.add_parser("sweep", help="hyperparameter search (Optuna) over a finetune or pretrain recipe; "
                         "re-run the same command to continue a killed sweep")
    p.add_argument("--config", help="YAML recipe with a finetune: (or train:) section")
    p.add_argument("--trials", type=int, default=12, help="trials in all, counting those already run (default 12)")
    p.add_argument("--param", action="append", default=[], help="FIELD=loguniform:LOW:HIGH | uniform:LOW:HIGH | "
                   "int:LOW:HIGH | choice:A,B,...; FIELD of the stage (lr) or model.FIELD; repeatable")
    p.add_argument("--metric", default="", help="figure to optimise: accuracy (classify; maximised), val_loss "
                   "(otherwise; minimised), or any figure the run reports")
    p.add_argument("--out", default="runs/sweep", help="trial folders, study.db, best.yaml and plots")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (each trial keeps the recipe's)")
    p.add_argument("--track", default="none", help="none | mlflow: every trial as an MLflow run")
    p.add_argument("--tracking-uri", default="", help="MLflow store (default: OUT's parent/mlflow.db)")
    p.set_defaults(func=cmd_sweep)

    p = verbs.add_parser("registry", help="MLflow model registry: register a checkpoint, list versions, move an alias")
    p.add_argument("action", choices=("register", "list", "alias"))
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--ckpt", help="register: checkpoint or run folder (a tracked run's logged model is reused)")
    p.add_argument("--version", type=int, help="alias: the version the alias should point at")
    p.add_argument("--alias", default="", help="register/alias: e.g. production; serve --ckpt models:/NAME@production")
    p.add_argument("--tracking-uri", default="", help="MLflow store (default: MLFLOW_TRACKING_URI, else "
                   "sqlite:///runs/mlflow.db)")
    p.set_defaults(func=cmd_registry)

    p = verbs.add_parser("audit", help="membership-inference attack: does the model give away its training data?")
    add_ckpt(p, "fine-tuned checkpoint folder or run folder")
    p.add_argument("--train", required=True, help="labelled file the model was trained on (the members)")
    p.add_argument("--holdout", required=True, help="labelled file from the same source it never saw")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-examples", type=int, default=0, help="the first N of each file (0: all)")
    p.add_argument("--out", default="runs/audit", help="where audit.json and roc.png go")
    p.set_defaults(func=cmd_audit)

    p = verbs.add_parser("quickstart", help="prepare, pretrain, evaluate and generate on Python's own source")
    p.add_argument("--out", default="runs/quickstart", help="where everything goes (default: runs/quickstart)")
    p.add_argument("--minutes", type=float, default=3.0, help="training time budget (default: 3)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    p.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except BigModelError as e:
        print(f"bigmodel {args.verb}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"bigmodel {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
