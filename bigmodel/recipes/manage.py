"""The verbs that move data and models around: prepare, dataset, convert, export, registry, serve, audit
and the quickstart."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from bigmodel.config import (
    Checked,
    CkptConfig,
    DataConfig,
    DeviceConfig,
    LabelColumnsConfig,
    PrecisionConfig,
    ServeConfig,
    StorageConfig,
)
from bigmodel.errors import BigModelError, require
from bigmodel.recipes.common import keep_figures, load, storage


@dataclass
class DatasetConfig(PrecisionConfig, DeviceConfig, StorageConfig):
    """`bigmodel dataset NAME`: a dataset from what every machine has (the device, number format and storage
    flags are for `preference --rejected-from`, whose model replies)."""

    name: Literal["code", "qa", "pinyin", "translation", "chat", "preference", "rule", "digits", "keywords",
                  "speech"] = "code"
    out: str = ""  # folder to write
    positional: ClassVar[str] = "name"
    source: str = ""  # translation: its language (en); pinyin: ChnSentiCorp's all.csv; speech: SST-2's train.tsv
    target: str = "zh_CN"  # translation, chat, preference: the language translated into (a /usr/share/locale name)
    examples: int = 0  # keywords, speech: training clips (4000, 5000); preference: training prompts (800)
    rejected_from: str = ""  # preference: this checkpoint's wrong replies are rejected (--samples: its best chosen)
    samples: int = 0  # preference --rejected-from: replies sampled per prompt; best by chrF chosen, worst rejected
    temperature: float = 0.8  # preference --samples: sampling temperature
    skip: int = 0  # preference: training prompts passed over first (those the model was tuned on)
    test_rows: int = 500  # chat: conversations test keeps, the first N of its fixed shuffle (0: all)
    required: ClassVar[tuple[str, ...]] = ("out",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rejected_from and self.name != "preference":
            raise BigModelError("--rejected-from is for `dataset preference`")
        if self.samples and (not self.rejected_from or self.samples < 2 or self.temperature <= 0):
            raise BigModelError("--samples needs --rejected-from, at least 2 samples and --temperature > 0")
        if self.test_rows < 0:
            raise BigModelError(f"--test-rows {self.test_rows}: must be 0 (all) or more")


@dataclass
class ConvertConfig(StorageConfig):
    """`bigmodel convert`: a Hugging Face or CTranslate2 folder, a GGUF file or an OpenAI Whisper `.pt` as a
    bigmodel checkpoint."""

    from_hf: str = ""  # a folder, GGUF file or OpenAI .pt; or a packaged short name: minilm, smollm2, whisper-base
    out: str = ""  # checkpoint folder to write
    required: ClassVar[tuple[str, ...]] = ("from_hf", "out")


@dataclass
class ExportConfig(CkptConfig):
    """`bigmodel export`: a Llama, GPT-2, BERT or BART-shaped folder that transformers loads, or a GGUF file."""

    to_hf: str = ""  # folder to write
    to_gguf: str = ""  # GGUF file to write (Llama-family models)
    type: Literal["f32", "f16", "q8_0"] = "f16"  # --to-gguf: number format of the matrices

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ckpt and not (self.to_hf or self.to_gguf):
            raise BigModelError("export needs --to-hf FOLDER or --to-gguf FILE")


@dataclass
class RegistryConfig(Checked):
    """`bigmodel registry ACTION`: checkpoints as named, numbered versions in MLflow's registry."""

    action: Literal["register", "list", "alias"] = "list"
    name: str = ""  # registered model name
    positional: ClassVar[str] = "action"
    ckpt: str = ""  # register: checkpoint or run folder (a tracked run's logged model is reused)
    version: int = 0  # alias: the version the alias should point at
    alias: str = ""  # register/alias: e.g. production; serve --ckpt models:/NAME@production
    require: str = ""  # alias: figures the version's model card must meet, e.g. "accuracy>=0.85,mia_auc<=0.6"
    tracking_uri: str = ""  # MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db)
    required: ClassVar[tuple[str, ...]] = ("name",)


@dataclass
class AuditConfig(CkptConfig, LabelColumnsConfig):
    """`bigmodel audit`: does the model give away its training data (membership inference), or treat
    groups of people differently (`--fairness`)?"""

    train: str = ""  # labelled file the model was trained on (the members)
    holdout: str = ""  # labelled file from the same source it never saw
    max_examples: int = 0  # the first N of each file (0: all)
    out: str = "runs/audit"  # where audit.json and roc.png (fairness.json, fairness.png) go
    fairness: bool = False  # instead: figures per group and, with --swap, a counterfactual test on --data
    data: str = ""  # --fairness: labelled CSV/TSV/JSONL
    group_column: str = ""  # --fairness: the column naming each text's group (default: which --swap side it names)
    swap: str = ""  # --fairness: en, zh or a file of word pairs (two words a line) to swap in each text
    positive_label: str = ""  # --fairness: the label whose predicted rate is compared (default: the last label)
    required: ClassVar[tuple[str, ...]] = ("ckpt",)


@dataclass
class CardConfig(CkptConfig):
    """`bigmodel card`: one page on a checkpoint: data, shape, compute, metrics, privacy, explanations, fairness."""

    out: str = ""  # card.md or card.html (default: Markdown on stdout)
    required: ClassVar[tuple[str, ...]] = ("ckpt",)


@dataclass
class QuickstartConfig(DeviceConfig):
    """`bigmodel quickstart`: prepare, pretrain, evaluate and generate on Python's own source."""

    out: str = "runs/quickstart"  # where everything goes
    minutes: float = 3.0  # training time budget
    files: int = 0  # read only this many of the standard library's files, for a quicker first look (0: all)


def cmd_prepare(cfg: DataConfig) -> None:
    from bigmodel.data.prepare import prepare

    meta = prepare(cfg)
    clean = meta["cleaning"]
    print(f"wrote {cfg.out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
          f"({meta['dtype']}), vocabulary {meta['vocab_size']:,}")
    print(f"documents: {clean['documents_in']:,} read, {clean['documents_kept']:,} kept, "
          f"{clean['duplicates_dropped']:,} duplicates and {clean['empty_dropped']:,} empty dropped, "
          f"{clean['control_chars_removed']:,} control characters removed")
    if "pii_replaced" in clean:
        print("personal data replaced: " + ", ".join(f"{k} {v}" for k, v in clean["pii_replaced"].items()))


def cmd_dataset(args: DatasetConfig) -> None:
    import torch

    from bigmodel.config import GenerateConfig
    from bigmodel.data.datasets import build
    from bigmodel.evaluate.seq2seq import best_and_worst
    from bigmodel.infer.chat import replies

    judge = None
    if args.rejected_from:
        model, tok, folder = load(args, ckpt=args.rejected_from, decoding=True)
        k = max(args.samples, 1)
        # without --samples one greedy reply, the answer `evaluate --task chat` scores; with it, k sampled ones
        config = GenerateConfig(temperature=args.temperature if args.samples else 0.0, max_new_tokens=64)
        torch.manual_seed(0)

        def judge(conversations: list[list[dict]], references: list[str]) -> list[tuple[str, str]]:
            found = replies(model, tok, folder, [c for c in conversations for _ in range(k)], config)
            if not args.samples:
                return list(zip(references, found, strict=True))
            return [best_and_worst(found[i * k:(i + 1) * k], ref) for i, ref in enumerate(references)]
    counts = build(args.name, args.out, args.source, args.examples, args.target, judge, args.skip,
                   args.test_rows)
    print(f"wrote {args.out}: " + ", ".join(f"{split} {n:,}" for split, n in counts.items()))


def cmd_convert(args: ConvertConfig) -> None:
    from bigmodel.model.checkpoint import save_checkpoint
    from bigmodel.model.formats import find_pretrained, from_pretrained, read_tokenizer, tokenizer_files

    source = find_pretrained(args.from_hf)
    model = from_pretrained(source)
    save_checkpoint(Path(args.out), model, read_tokenizer(source), {"converted_from": str(source.resolve())},
                    storage=storage(args), plain=tokenizer_files(source))  # the chat template, where `serve` finds it
    print(f"wrote {args.out}: {model.num_params() / 1e6:.1f}M parameters from {source}")


def cmd_export(args: ExportConfig) -> None:
    """The chat template and special tokens go along: `tokenizer_config.json` beside a folder, metadata in GGUF."""
    from bigmodel.model.formats import to_gguf, to_hf, tokenizer_files

    model, tok, folder = load(args)
    if args.to_hf:
        family = to_hf(model, args.to_hf, tok, folder)
        for name, text in tokenizer_files(folder).items():
            (Path(args.to_hf) / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.to_hf} from {folder}: load it with transformers' {family}.from_pretrained")
    if args.to_gguf:
        to_gguf(model, tok, folder, args.to_gguf, args.type)
        size = Path(args.to_gguf).stat().st_size / 1e6
        print(f"wrote {args.to_gguf} from {folder}: {args.type}, {size:.1f} MB")


def cmd_registry(args: RegistryConfig) -> None:
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
        if args.require:
            from bigmodel.evaluate.card import requirements, unmet

            requirements(args.require)  # a malformed gate is refused before anything is fetched
            uri = f"models:/{args.name}/{args.version}"
            failed = unmet(card_of(registry.fetch(uri, args.tracking_uri), storage(args)).figures, args.require)
            if failed:
                raise BigModelError(f"{uri} stays off @{args.alias}: its model card fails " + "; ".join(failed))
        registry.set_alias(args.name, args.version, args.alias, args.tracking_uri)
        met = f" (card meets {args.require})" if args.require else ""
        print(f"models:/{args.name}@{args.alias} -> version {args.version}{met}")
    else:
        for v in registry.versions(args.name, args.tracking_uri):
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created_ms / 1000))
            aliases = ", ".join(f"@{a}" for a in v.aliases) or "-"
            print(f"{v.name}/{v.version}\t{aliases}\t{when}\trun {v.run_id or '-'}\t{v.source}")


def cmd_serve(cfg: ServeConfig) -> None:
    for module in ("fastapi", "uvicorn"):
        require(module, "serve", "serving")
    from bigmodel.serve.app import create_app, serve

    if cfg.ckpt.startswith("models:/"):
        from bigmodel.model.registry import fetch

        cfg = dataclasses.replace(cfg, ckpt=str(fetch(cfg.ckpt, cfg.tracking_uri)))
    app = create_app(cfg)
    print(f"bigmodel serve: http://{cfg.host}:{cfg.port}/v1 (model loading; /health answers 200 when ready)",
          file=sys.stderr, flush=True)
    serve(app, cfg)
    if app.state.service.failure:
        raise BigModelError(f"{cfg.ckpt}: {app.state.service.failure}")


def cmd_audit(args: AuditConfig) -> None:
    if args.fairness:
        return audit_fairness(args)
    from bigmodel.data.labelled import read_labelled
    from bigmodel.evaluate.membership import example_losses, loss_attack, plot_roc

    for name in ("train", "holdout"):
        if not getattr(args, name):
            raise BigModelError(f"audit needs --{name} FILE (or --fairness --data FILE for the fairness checks)")
    model, tok, folder = load(args, with_head=True)
    members = read_labelled(args.train, args.text_column, args.label_column)
    non_members = read_labelled(args.holdout, args.text_column, args.label_column)
    if args.max_examples:
        members, non_members = members[:args.max_examples], non_members[:args.max_examples]
    report, fpr, tpr = loss_attack(example_losses(model, tok, members), example_losses(model, tok, non_members))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(report.to_dict(), indent=2))
    keep_figures(folder, "membership", {**report.to_dict(), "train": args.train, "holdout": args.holdout})
    plot_roc(fpr, tpr, report, out / "roc.png", f"membership inference on {folder}")
    print(f"loss attack on {report.members} training and {report.non_members} held-out examples: AUC {report.auc:.4f} "
          f"(0.5 = nothing leaks), TPR at 1% FPR {report.tpr_at_1pct_fpr:.4f}; mean loss {report.member_loss:.4f} "
          f"(train) vs {report.non_member_loss:.4f} (held out) | {out / 'audit.json'}, {out / 'roc.png'}")


def audit_fairness(args: AuditConfig) -> None:
    """Per-group accuracy, F1 and positive rate with the largest gaps; with --swap, the counterfactual test."""
    from bigmodel.data.inputs import TextInputs
    from bigmodel.data.labelled import label_indices, read_columns
    from bigmodel.evaluate.fairness import counterfactual, group_figures, plot_groups, swap_list
    from bigmodel.infer.classify import predict_scores

    if not args.data:
        raise BigModelError("audit --fairness needs --data FILE (labelled CSV/TSV/JSONL)")
    if not (args.group_column or args.swap):
        raise BigModelError("audit --fairness needs --group-column COL or --swap en|zh|FILE to know the groups")
    swaps = swap_list(args.swap) if args.swap else None
    model, tok, folder = load(args, with_head=True)
    head = model.head_config
    if head.task != "classify":
        raise BigModelError(f"{folder}: fairness is measured on classifiers; this checkpoint's head is {head.task!r}")
    columns = [args.text_column, args.label_column] + ([args.group_column] if args.group_column else [])
    rows = read_columns(args.data, columns)[:args.max_examples or None]
    y_true = label_indices([r[1] for r in rows], head.labels, args.data)
    positive = args.positive_label or head.labels[-1]
    if positive not in head.labels:
        raise BigModelError(f"--positive-label {positive!r} is not a label of this model ({', '.join(head.labels)})")
    inputs = TextInputs(tok, model.config.block_size)

    def probabilities(texts: list[str]):
        return predict_scores(model, inputs.read(texts), inputs, head.n_outputs).softmax(-1).numpy()

    texts = [r[0] for r in rows]
    predicted = probabilities(texts).argmax(-1).tolist()
    groups = [r[2] for r in rows] if args.group_column else [swaps.group(t) for t in texts]
    report = group_figures(y_true, predicted, groups, head.labels,
                           head.labels.index(positive))
    by = f"column {args.group_column}" if args.group_column else f"the {swaps.source} swap list"
    report.update({"data": args.data, "texts": len(rows), "positive_label": positive, "grouped_by": by})
    if swaps:
        report["counterfactual"] = {"list": swaps.source, **counterfactual(texts, swaps, probabilities, head.labels)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fairness.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    plot_groups(report, out / "fairness.png", f"{folder.name} on {Path(args.data).name}, by {report['grouped_by']}")
    keep_figures(folder, "fairness", report)
    print(f"{len(rows)} texts of {args.data}, grouped by {report['grouped_by']} (positive label {positive!r}):")
    for name, g in report["groups"].items():
        print(f"  {name:<28} {g['count']:>6} texts  accuracy {g['accuracy']:.4f}  macro-F1 {g['macro_f1']:.4f}  "
              f"positive rate {g['positive_rate']:.4f} (labelled {g['base_rate']:.4f})")
    for name, gap in report["gaps"].items():
        print(f"largest {name} gap {gap['gap']:.4f}: {gap['highest']} over {gap['lowest']}")
    swap = report.get("counterfactual")
    if swap and swap["rewritten"]:
        print(f"counterfactual ({swap['list']}): {swap['rewritten']} texts rewritten, flip rate "
              f"{swap['flip_rate']:.4f} ({swap['flips']}), mean shift of the predicted class's probability "
              f"{swap['mean_shift']:+.4f} (absolute {swap['mean_abs_shift']:.4f})")
        for w in swap["worst"][:3]:
            print(f"  {w['label']} {w['probability']:.3f} -> {w['swapped_probability']:.3f}: {w['text'][:70]!r} -> "
                  f"{w['swapped'][:70]!r}")
    elif swap:
        print(f"counterfactual ({swap['list']}): no text mentions a word of the list")
    print(f"figures: {out / 'fairness.json'}, {out / 'fairness.png'}")


def card_of(ckpt: str | Path, store):
    """The model card of a checkpoint (or run folder)."""
    from bigmodel.evaluate.card import build
    from bigmodel.model.checkpoint import load_checkpoint, locate, read_sections
    from bigmodel.model.heads import HEAD_FILE

    folder, is_hf = locate(ckpt)
    if is_hf:
        raise BigModelError(f"{ckpt}: an imported model has no run to describe; convert it or fine-tune it first")
    model, _, folder = load_checkpoint(folder, with_head=(folder / HEAD_FILE).is_file(), storage=store)
    params = sum(p.numel() for p in model.parameters())
    return build(folder, read_sections(folder, store), params, getattr(model, "head_config", None))


def cmd_card(args: CardConfig) -> None:
    card = card_of(args.ckpt, storage(args))
    if not args.out:
        print(card.markdown())
        return
    out = Path(args.out)
    if out.suffix.lower() not in (".md", ".html"):
        raise BigModelError(f"--out {args.out}: a card is written as .md or .html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(card.html() if out.suffix.lower() == ".html" else card.markdown(), encoding="utf-8")
    print(f"wrote {out}: {len(card.sections)} sections, {len(card.figures)} figures for gates")


def cmd_quickstart(args: QuickstartConfig) -> None:
    from bigmodel.recipes.quickstart import quickstart

    quickstart(Path(args.out), args.minutes, args.device, args.files)
