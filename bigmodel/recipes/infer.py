"""The verbs that run a model over inputs: generate, chat, embed, zeroshot, index and search."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from bigmodel import disk
from bigmodel.config import (
    CkptConfig,
    DecodingConfig,
    GenerateConfig,
    PrecisionConfig,
    TextColumnConfig,
    resolve,
)
from bigmodel.data.readers import input_lines, read_lines
from bigmodel.errors import BigModelError
from bigmodel.recipes.common import input_batches, load, write_jsonl


@dataclass
class PromptsConfig(PrecisionConfig, CkptConfig, GenerateConfig):
    """`bigmodel generate`: continue prompts, streaming the text."""

    prompt: str | None = None  # text to continue
    prompt_file: str = ""  # one prompt per line (write \n for a newline inside one)
    greedy: bool = False  # always take the most likely token


@dataclass
class ChatConfig(PrecisionConfig, CkptConfig, DecodingConfig):
    """`bigmodel chat`: talk with a chat model in the terminal; replies stream, the conversation is kept."""

    system: str = ""  # a system message that opens the conversation
    chat_template: str = ""  # Jinja file, or `plain` (default: the model's own)
    greedy: bool = False  # always take the most likely token
    max_new_tokens: int = 512  # per reply


@dataclass
class EmbedConfig(CkptConfig):
    """`bigmodel embed`: one mean-pooled, L2-normalised vector per input line, as .npy."""

    input: str = ""  # UTF-8 text file, one text per line (a row each, blank ones too), - for stdin, or a pipe
    out: str = ""  # .npy file to write
    batch_size: int = 32
    max_length: int = 256  # tokens kept per line
    required: ClassVar[tuple[str, ...]] = ("ckpt", "input", "out")


@dataclass
class ZeroshotConfig(CkptConfig):
    """`bigmodel zeroshot`: label texts with no training, by the nearest label description."""

    labels: str = ""  # VALUE[=DESCRIPTION],... e.g. positive,negative
    template: str = "{}"  # how a label is phrased, e.g. "This review is {}."
    input: str = ""  # UTF-8 text file, one text per line (a row each, blank ones too), - for stdin, or a pipe
    out: str = ""  # JSONL file to write (default: stdout)
    multi_label: bool = False  # every label whose cosine reaches --threshold
    threshold: float = 0.1  # with --multi-label: the cosine a label needs
    max_length: int = 256
    required: ClassVar[tuple[str, ...]] = ("ckpt", "labels", "input")


@dataclass
class IndexConfig(CkptConfig, TextColumnConfig):
    """`bigmodel index`: embed documents into a search index folder."""

    input: str = ""  # one document per line; or JSONL/CSV/TSV with --text-column
    out: str = ""  # index folder to write
    max_length: int = 256  # tokens of each document kept
    required: ClassVar[tuple[str, ...]] = ("ckpt", "input", "out")


@dataclass
class SearchConfig(CkptConfig):
    """`bigmodel search`: the documents of an index nearest to a query; --ckpt defaults to the index's encoder."""

    index: str = ""  # folder written by `bigmodel index`
    query: str = ""  # text to search for
    query_file: str = ""  # one query per line
    top_k: int = 5
    required: ClassVar[tuple[str, ...]] = ("index",)


def cmd_generate(args: PromptsConfig) -> None:
    import torch

    from bigmodel.data.tokenizer import stop_ids
    from bigmodel.infer.generate import generate_texts, stream_text
    from bigmodel.model.formats import tokenizer_config

    cfg = resolve(GenerateConfig, args, {"temperature": 0.0} if args.greedy else None)
    prompts = _prompts(args)
    model, tok, folder = load(args, decoding=True)
    if model.config.encoder_layers:  # the prompt is a source; the output its target
        from bigmodel.infer.seq2seq import generate_targets

        for prompt, target in zip(prompts, generate_targets(model, tok, prompts, cfg), strict=True):
            print(target if len(prompts) == 1 else f"{prompt}\t{target}")
        return
    generator = torch.Generator(next(model.parameters()).device).manual_seed(cfg.seed)
    stops = stop_ids(tok, tokenizer_config(folder))  # the model's own end of turn too
    for i, prompt in enumerate(prompts):
        if len(prompts) > 1:
            print(f"=== prompt {i + 1} ===", flush=True)
        if cfg.num_samples == 1:
            sys.stdout.write(prompt)
            for piece in stream_text(model, tok, prompt, cfg, generator, stops):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            for j, text in enumerate(generate_texts(model, tok, prompt, cfg, stops)):
                print(f"--- sample {j + 1} ---\n{prompt}{text}")
        sys.stdout.flush()


def cmd_chat(args: ChatConfig) -> None:
    """Read a turn per line (`/reset` starts over, `/exit` or end of input ends), stream each reply until
    the template's end-of-turn token; the oldest turns give way when the conversation outgrows the context."""
    import torch

    from bigmodel.data.tokenizer import stop_ids
    from bigmodel.infer.chat import chat_template
    from bigmodel.infer.generate import stream_text
    from bigmodel.model.formats import tokenizer_config

    cfg = resolve(GenerateConfig, args, {"temperature": 0.0} if args.greedy else None)
    model, tok, folder = load(args, decoding=True)
    if tok is None or not model.config.causal or model.config.encoder_layers:
        raise BigModelError(f"{args.ckpt}: chat needs a decoder-only text model")
    special = tokenizer_config(folder)
    render, stops = chat_template(special, args.ckpt, args.chat_template), stop_ids(tok, special)
    opening = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(opening)
    generator = torch.Generator(next(model.parameters()).device).manual_seed(cfg.seed)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.ckpt}: /reset starts over, /exit or Ctrl-D ends", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "").strip()
        except EOFError:
            break
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            messages = list(opening)
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        prompt = render(messages)
        while len(tok.encode(prompt, add_special_tokens=False).ids) >= model.config.block_size and \
                len(messages) > len(opening) + 1:
            del messages[len(opening):len(opening) + 2]  # the oldest exchange
            prompt = render(messages)
        reply = []
        for piece in stream_text(model, tok, prompt, cfg, generator, stops):
            sys.stdout.write(piece)
            sys.stdout.flush()
            reply.append(piece)
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply).strip()})


def _prompts(args: PromptsConfig) -> list[str]:
    if args.prompt_file:
        prompts = [line.replace("\\n", "\n") for line in read_lines(args.prompt_file, "prompt")]
        if not prompts:
            raise BigModelError(f"{args.prompt_file}: holds no prompts")
        return prompts
    if args.prompt is None:
        raise BigModelError("generate needs --prompt TEXT or --prompt-file FILE")
    return [args.prompt]


def cmd_embed(args: EmbedConfig) -> None:
    """A vector per input line (blank ones too), computed block by block as the lines arrive."""
    from bigmodel.infer.embed import embed_texts

    model, tok, _ = load(args)
    out = Path(args.out if args.out.endswith(".npy") else f"{args.out}.npy")
    blocks = (embed_texts(model, tok, texts, args.batch_size, args.max_length)
              for texts in input_batches(args.input, tok, 4096))
    rows = write_npy(out, blocks, model.config.n_embd, f"{args.input}: holds no lines to embed")
    print(f"wrote {out}: {rows} vectors of {model.config.n_embd} dimensions")


def write_npy(path: Path, blocks: Iterable, width: int, if_empty: str) -> int:
    """Float32 rows of `width` into a .npy file as they come, so memory holds one block: raw rows first
    (the header needs the count), then the file, renamed into place once whole. The count of rows."""
    import numpy as np

    part, tmp = path.with_name(path.name + ".part"), path.with_name(path.name + ".tmp")
    rows = 0
    try:
        with part.open("wb") as fh:
            for block in blocks:
                np.asarray(block, dtype="<f4").tofile(fh)
                rows += len(block)
        if not rows:
            raise BigModelError(if_empty)
        raw = np.memmap(part, dtype="<f4", mode="r", shape=(rows, width))
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype="<f4", shape=(rows, width))
        for start in range(0, rows, 1 << 16):
            array[start:start + (1 << 16)] = raw[start:start + (1 << 16)]
        array.flush()
        del array, raw
        disk.replace(tmp, path)
    finally:
        part.unlink(missing_ok=True)
    return rows


def cmd_zeroshot(args: ZeroshotConfig) -> None:
    """JSONL per input line: the nearest label (or every label over --threshold) and each label's cosine."""
    from bigmodel.infer.zeroshot import label_similarities, parse_labels

    values, descriptions = parse_labels(args.labels)
    model, tok, _ = load(args)

    def record(text: str, row) -> dict:
        found = {"text": text, "scores": {v: round(float(x), 4) for v, x in zip(values, row, strict=True)}}
        if args.multi_label:
            found["labels"] = [v for v, x in zip(values, row, strict=True) if x >= args.threshold]
        else:
            found["label"] = values[int(row.argmax())]
        return found

    def records(texts: list[str]) -> list[dict]:
        sims = label_similarities(model, tok, texts, descriptions, args.template, args.max_length)
        return [record(t, row) for t, row in zip(texts, sims, strict=True)]

    write_jsonl(args.out, map(records, input_batches(args.input, tok, 1024)))


def cmd_index(args: IndexConfig) -> None:
    from bigmodel.data.labelled import read_columns
    from bigmodel.infer.retrieval import build_index

    suffix = Path(args.input).suffix.lower()
    docs = [r[0] for r in read_columns(args.input, [args.text_column])] if suffix in (".jsonl", ".csv", ".tsv") \
        else list(input_lines(args.input))  # a blank line is a document too: hit ids are line numbers
    model, tok, _ = load(args)
    out = build_index(model, tok, docs, args.out, args.ckpt, args.max_length)
    print(f"wrote {out}: {len(docs)} documents embedded by {args.ckpt}")


def cmd_search(args: SearchConfig) -> None:
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
