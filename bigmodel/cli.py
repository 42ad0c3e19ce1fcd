"""`bigmodel VERB [flags]`: the table of verbs, each a config dataclass and the one function it calls.

Every field of a verb's config is a flag (`max_length` → `--max-length`, its comment the help), and every
verb takes `--config FILE`, a YAML recipe whose section for the verb sets the same fields; flags win.
Errors meant for users (`BigModelError`) print as one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from bigmodel.config import (
    DataConfig,
    FederatedConfig,
    FinetuneConfig,
    ModelConfig,
    ServeConfig,
    TrainConfig,
    load_yaml,
    resolve,
    tuning_table,
)
from bigmodel.errors import BigModelError
from bigmodel.flags import add_flags
from bigmodel.recipes import compress, evaluate, explain, infer, manage, predict, speech, train


@dataclass(frozen=True)
class Verb:
    configs: tuple[type, ...]  # the dataclasses whose fields are its flags (the first is its own)
    run: Callable[[Any], None]  # called with the resolved config (or, for `layered` verbs, the parsed flags)
    help: str
    section: str = ""  # the recipe section it reads (default: the verb's name); for `layered` verbs, which ones
    layered: bool = False  # its recipe has several sections, which `run` layers itself (see recipes/train.py)
    epilog: str = ""  # printed after the flags by --help


VERBS: dict[str, Verb] = {
    "prepare": Verb((DataConfig,), manage.cmd_prepare, "clean a corpus, train a tokenizer, write token shards",
                    section="data"),
    "pretrain": Verb((train.PresetConfig, TrainConfig, ModelConfig), train.cmd_pretrain,
                     "train a Transformer on a prepared folder", section="preset:, model: and train:", layered=True),
    "evaluate": Verb((evaluate.EvaluateConfig,), evaluate.cmd_evaluate,
                     "LM perplexity; classifier, seq2seq, QA, zero-shot, retrieval, CTC or Whisper (asr) figures"),
    "generate": Verb((infer.PromptsConfig,), infer.cmd_generate, "continue a prompt, streaming the text"),
    "chat": Verb((infer.ChatConfig,), infer.cmd_chat, "talk with a chat model in the terminal (its chat template)"),
    "convert": Verb((manage.ConvertConfig,), manage.cmd_convert,
                    "turn a Hugging Face folder (GPT-2, BERT, Llama family) or GGUF file into a checkpoint"),
    "export": Verb((manage.ExportConfig,), manage.cmd_export,
                   "write a Llama, GPT-2, BERT or BART-shaped folder that transformers loads, or a GGUF file"),
    "finetune": Verb((FinetuneConfig,), train.cmd_finetune, "train a pretrained model (or a new one from a "
                     "recipe's model: section): classify, regress, seq2seq, qa, retrieval, ctc, asr (Whisper)",
                     section="finetune: (and model:)", layered=True, epilog=tuning_table()),
    "predict": Verb((predict.PredictConfig,), predict.cmd_predict,
                    "label and probabilities, an answer span, or a target text, as JSONL"),
    "transcribe": Verb((speech.TranscribeConfig,), speech.cmd_transcribe,
                       "speech to text with Whisper (whisper-tiny.en, whisper-base): any format and sample rate"),
    "zeroshot": Verb((infer.ZeroshotConfig,), infer.cmd_zeroshot,
                     "label texts with no training: nearest label description by embedding"),
    "index": Verb((infer.IndexConfig,), infer.cmd_index, "embed documents into a search index folder"),
    "search": Verb((infer.SearchConfig,), infer.cmd_search, "the documents of an index nearest to a query"),
    "dataset": Verb((manage.DatasetConfig,), manage.cmd_dataset, "build a dataset from what every machine has (code, "
                    "qa, pinyin, translation, chat, preference, rule; digits; espeak-ng speech: keywords, speech)"),
    "embed": Verb((infer.EmbedConfig,), infer.cmd_embed, "one mean-pooled, L2-normalised vector per input line"),
    "quantize": Verb((compress.QuantizeConfig,), compress.cmd_quantize,
                     "int8 linear layers or bf16 weights; prints size and perplexity (Whisper: WER) change"),
    "prune": Verb((compress.PruneConfig,), compress.cmd_prune,
                  "zero the smallest weights of each block matrix; prints the cost"),
    "serve": Verb((ServeConfig,), manage.cmd_serve,
                  "OpenAI-compatible HTTP server (completions, chat, embeddings, classify, audio transcriptions)"),
    "federated": Verb((FederatedConfig, FinetuneConfig), train.cmd_federated, "fine-tune over Flower: a "
                      "SuperLink, one SuperNode per data owner", section="federated: and finetune:", layered=True),
    "explain": Verb((explain.ExplainConfig,), explain.cmd_explain,
                    "why a model decided: token attributions, attention maps, faithfulness"),
    "sweep": Verb((train.SweepConfig,), train.cmd_sweep, "hyperparameter search (Optuna) over a finetune or "
                  "pretrain recipe; re-run the same command to continue a killed sweep",
                  section="sweep: (and the finetune: or train: it varies)", layered=True),
    "registry": Verb((manage.RegistryConfig,), manage.cmd_registry,
                     "MLflow model registry: register a checkpoint, list versions, move an alias"),
    "audit": Verb((manage.AuditConfig,), manage.cmd_audit, "membership-inference attack (does the model give "
                  "away its training data?); --fairness: per-group figures and a counterfactual swap test"),
    "card": Verb((manage.CardConfig,), manage.cmd_card, "a model card from the checkpoint, its run and its audits "
                 "(Markdown or HTML)"),
    "quickstart": Verb((manage.QuickstartConfig,), manage.cmd_quickstart,
                       "prepare, pretrain, evaluate and generate on Python's own source"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bigmodel", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, verb in VERBS.items():
        p = subparsers.add_parser(name, help=verb.help, description=verb.help, epilog=verb.epilog,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sections = verb.section if verb.layered else f"{verb.section or name}:"
        p.add_argument("--config", help=f"YAML recipe: its {sections} section sets these flags")
        positional = verb.configs[0].positional  # a field given without a flag
        if positional:
            hint = typing.get_type_hints(verb.configs[0])[positional]
            p.add_argument(positional, metavar="{" + ",".join(typing.get_args(hint)) + "}")
        seen = {positional}
        for cls in verb.configs:  # a field two configs share is one flag
            add_flags(p, cls, skip=tuple(seen))
            seen |= {f.name for f in fields(cls)}
    return parser


def config_of(name: str, args: argparse.Namespace) -> Any:
    """The verb's config: defaults < its section of --config < flags, with the fields it requires."""
    verb = VERBS[name]
    cls, section = verb.configs[0], verb.section or name
    cfg = resolve(cls, load_yaml(args.config).get(section), args)
    for field in cls.required:
        if getattr(cfg, field) in ("", None, []):
            flag = field.replace("_", "-")
            raise BigModelError(f"{name} needs --{flag} (or `{field}:` under `{section}:` in --config)")
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        verb = VERBS[args.verb]
        verb.run(args if verb.layered else config_of(args.verb, args))
    except BigModelError as e:
        print(f"bigmodel {args.verb}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"bigmodel {args.verb}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
