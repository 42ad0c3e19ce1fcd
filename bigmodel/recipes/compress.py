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
    text: str = ""  # prepared folder or text file to measure perplexity on
    required: ClassVar[tuple[str, ...]] = ("ckpt", "out", "text")


@dataclass
class QuantizeConfig(CompressConfig):
    """`bigmodel quantize`: int8 linear layers or bf16 weights."""

    method: Literal["int8", "bf16"] = "int8"  # int8: dynamic int8 linear layers (torch.ao); bf16: every weight


@dataclass
class PruneConfig(CompressConfig):
    """`bigmodel prune`: the smallest weights of each block matrix set to zero."""

    sparsity: float = 0.5  # fraction of each matrix set to zero


def compress_checkpoint(args: CompressConfig, change, what: str) -> None:
    """Load, measure, `change` the model in place (or return a new one), save, measure again."""
    from bigmodel.evaluate.lm import evaluate_lm
    from bigmodel.model.checkpoint import WEIGHTS, save_checkpoint
    from bigmodel.model.formats import tokenizer_files

    model, tok, folder = load(args)
    before = evaluate_lm(model, tok, args.text)
    fp32_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    model = change(model) or model
    save_checkpoint(Path(args.out), model, tok, {"compressed_from": str(folder.resolve()), "compression": what},
                    storage=storage(args), plain=tokenizer_files(folder))
    after = evaluate_lm(load(args, ckpt=args.out)[0], tok, args.text)
    size_before = (folder / WEIGHTS).stat().st_size if (folder / WEIGHTS).is_file() else fp32_bytes  # imported
    size_after = (Path(args.out) / WEIGHTS).stat().st_size
    change_pct = 100 * (after.perplexity / before.perplexity - 1)
    print(f"{what}: weights {size_before / 1e6:.2f} MB -> {size_after / 1e6:.2f} MB; perplexity on {args.text} "
          f"{before.perplexity:.4f} -> {after.perplexity:.4f} ({change_pct:+.2f}%)")


def cmd_quantize(args: QuantizeConfig) -> None:
    from bigmodel.infer.compress import to_bf16
    from bigmodel.model.quantize import to_int8

    methods = {"bf16": (to_bf16, "bf16 weights"), "int8": (to_int8, "dynamic int8 linear layers")}
    change, what = methods[args.method]
    compress_checkpoint(args, change, what)


def cmd_prune(args: PruneConfig) -> None:
    from bigmodel.infer.compress import prune_magnitude

    compress_checkpoint(args, lambda m: prune_magnitude(m, args.sparsity), f"{args.sparsity:.0%} magnitude pruning")
