"""`bigmodel quantize` and `prune`: change the weights, save, and say what it cost in size and perplexity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from bigmodel.config import CkptConfig
from bigmodel.recipes.common import load, storage


@dataclass
class CompressConfig(CkptConfig):
    out: str = ""  # checkpoint folder to write
    text: str = ""  # prepared folder or text file to measure perplexity on; Whisper: a speech table (WER, speed)
    required: ClassVar[tuple[str, ...]] = ("ckpt", "out", "text")


@dataclass
class QuantizeConfig(CompressConfig):
    """`bigmodel quantize`: int8 linear layers or bf16 weights."""

    method: Literal["int8", "bf16"] = "int8"  # int8: dynamic int8 linear layers (torch.ao); bf16: every weight


@dataclass
class PruneConfig(CompressConfig):
    """`bigmodel prune`: the smallest weights of each block matrix set to zero."""

    sparsity: float = 0.5  # fraction of each matrix set to zero


@dataclass
class Measured:
    """What a change of weights is judged by: a language model's perplexity, or Whisper's WER with its
    speed (seconds of audio per second) and transcripts."""

    name: str
    value: float
    speed: float = 0.0
    texts: tuple[str, ...] = ()


def measure(model, tok, folder: Path, data: str) -> Measured:
    """Perplexity on `data` (a prepared folder or text file), or for Whisper WER on a speech table."""
    if model.config.source != "mel":
        from bigmodel.evaluate.lm import evaluate_lm

        return Measured("perplexity", evaluate_lm(model, tok, data).perplexity)
    import time

    from bigmodel.data.media import speech_rows
    from bigmodel.evaluate.asr import asr_figures
    from bigmodel.recipes.speech import table_transcripts, whisper_of

    vocab, rows = whisper_of(model, tok, folder, str(folder)), speech_rows(data, "audio", "text")
    table_transcripts(model, tok, vocab, rows[:1])  # warm-up: the first pass pays for allocation
    started = time.perf_counter()
    pairs, _ = table_transcripts(model, tok, vocab, rows)
    speed = sum(heard["duration"] for _, heard in pairs) / (time.perf_counter() - started)
    figures = asr_figures([row["text"] for row, _ in pairs], [heard["text"] for _, heard in pairs],
                          [row["language"] or heard["language"] for row, heard in pairs])
    return Measured("WER %", figures["wer"], speed, tuple(heard["text"] for _, heard in pairs))


def compress_checkpoint(args: CompressConfig, change, what: str) -> None:
    """Load, measure, `change` the model in place (or return a new one), save, measure again."""
    from bigmodel.model.checkpoint import WEIGHTS, save_checkpoint
    from bigmodel.model.formats import tokenizer_files

    model, tok, folder = load(args)
    before = measure(model, tok, folder, args.text)
    unique = {t.data_ptr(): t for t in model.state_dict().values()}  # a tied embedding counts once
    fp32_bytes = sum(t.numel() * t.element_size() for t in unique.values())
    model = change(model) or model
    save_checkpoint(Path(args.out), model, tok, {"compressed_from": str(folder.resolve()), "compression": what},
                    storage=storage(args), plain=tokenizer_files(folder))
    after = measure(load(args, ckpt=args.out)[0], tok, Path(args.out), args.text)
    size_before = (folder / WEIGHTS).stat().st_size if (folder / WEIGHTS).is_file() else fp32_bytes  # imported
    size_after = (Path(args.out) / WEIGHTS).stat().st_size
    change_pct = 100 * (after.value / before.value - 1) if before.value else 0.0
    line = (f"{what}: weights {size_before / 1e6:.2f} MB -> {size_after / 1e6:.2f} MB; {before.name} on {args.text} "
            f"{before.value:.4f} -> {after.value:.4f} ({change_pct:+.2f}%)")
    if before.texts:
        same = sum(a == b for a, b in zip(before.texts, after.texts, strict=True))
        line += (f"; {before.speed:.1f}x -> {after.speed:.1f}x real time; the same transcript for {same} of "
                 f"{len(before.texts)} recordings")
    print(line)


def cmd_quantize(args: QuantizeConfig) -> None:
    from bigmodel.infer.compress import to_bf16
    from bigmodel.model.quantize import to_int8

    methods = {"bf16": (to_bf16, "bf16 weights"), "int8": (to_int8, "dynamic int8 linear layers")}
    change, what = methods[args.method]
    compress_checkpoint(args, change, what)


def cmd_prune(args: PruneConfig) -> None:
    from bigmodel.infer.compress import prune_magnitude

    compress_checkpoint(args, lambda m: prune_magnitude(m, args.sparsity), f"{args.sparsity:.0%} magnitude pruning")
