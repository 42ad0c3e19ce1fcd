"""`bigmodel VERB [flags]`: the table of verbs, each its flags and the one function in `recipes/` it calls.

Errors meant for users (`BigModelError`) print as one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from bigmodel.config import (
    DataConfig,
    FederatedConfig,
    FinetuneConfig,
    GenerateConfig,
    ModelConfig,
    ServeConfig,
    StorageConfig,
    TrainConfig,
)
from bigmodel.errors import BigModelError
from bigmodel.flags import add_ckpt, add_flags, add_lexicon_flags
from bigmodel.recipes.compress import cmd_prune, cmd_quantize
from bigmodel.recipes.evaluate import cmd_evaluate
from bigmodel.recipes.explain import cmd_explain
from bigmodel.recipes.infer import cmd_embed, cmd_generate, cmd_index, cmd_search, cmd_zeroshot
from bigmodel.recipes.manage import (
    cmd_audit,
    cmd_convert,
    cmd_dataset,
    cmd_export,
    cmd_prepare,
    cmd_quickstart,
    cmd_registry,
    cmd_serve,
)
from bigmodel.recipes.predict import cmd_predict
from bigmodel.recipes.train import cmd_federated, cmd_finetune, cmd_pretrain, cmd_sweep


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
    p.add_argument("--metric", default="", help="figure to optimise (default: what the runs keep their best by: "
                   "accuracy, mse, f1, recall_at_1, cer, else val_loss); lower is better for losses, mse, cer, wer")
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
