"""`bigmodel explain`: attributions and attention for texts, rollout for images, faithfulness checks."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bigmodel.config import CkptConfig, LabelColumnsConfig
from bigmodel.data.readers import input_lines
from bigmodel.errors import BigModelError, require
from bigmodel.recipes.common import keep_figures, load


@dataclass
class ExplainConfig(CkptConfig, LabelColumnsConfig):
    """`bigmodel explain`: token attributions, attention maps, faithfulness; a decoder's next token."""

    text: str = ""  # the text to explain
    input: str = ""  # one text per line (- for stdin); images: an image, a folder of them, or a file of paths
    target: str = ""  # label to explain (default: the predicted one)
    baseline: Literal["pad", "mask"] = "pad"  # integrated gradients' reference: real tokens replaced by this
    method: str = "ig,occlusion"  # attribution methods, comma-separated: ig, occlusion, lime, shap, or all
    steps: int = 50  # integrated gradients' steps
    samples: int = 200  # lime, shap: token subsets each one scores
    out: str = "runs/explain"  # where report.html, attention.png, explanation.json go
    evaluate: bool = False  # measure faithfulness (ERASER) on --data instead
    data: str = ""  # with --evaluate: labelled CSV/TSV/JSONL; images: a folder (deletion check)
    max_examples: int = 0  # with --evaluate: the first N rows (0: all)


def cmd_explain(args: ExplainConfig) -> None:
    require("captum", "explain", "explaining")
    from bigmodel.infer.explain import explain_classifier, explain_next_token, faithfulness, method_names
    from bigmodel.infer.report import terminal_view, write_report
    from bigmodel.model.checkpoint import locate
    from bigmodel.model.heads import HEAD_FILE

    if args.steps < 2:
        raise BigModelError("--steps must be at least 2")
    if args.samples < 8:
        raise BigModelError("--samples must be at least 8")
    methods = tuple(method_names(args.method))
    folder, is_hf = locate(args.ckpt)
    classifier = not is_hf and (folder / HEAD_FILE).is_file()
    model, tok, folder = load(args, with_head=classifier)
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
        report = faithfulness(model, tok, texts[:args.max_examples or None], baseline=args.baseline, steps=args.steps,
                              methods=methods, samples=args.samples)
        out.mkdir(parents=True, exist_ok=True)
        (out / "faithfulness.json").write_text(json.dumps(report, indent=2))
        keep_figures(folder, "faithfulness", {**report, "data": args.data})
        print(f"faithfulness on {report['texts']['count']} texts of {args.data}: the predicted class's probability "
              "drop with the top k% tokens deleted (comprehensiveness, higher is better) or kept alone "
              "(sufficiency, lower is better)")
        print(f"{'method':<22}" + "".join(f"{f'comp@{k}':>10}" for k in (10, 20, 50))
              + "".join(f"{f'suff@{k}':>10}" for k in (10, 20, 50)) + f"{'s/text':>9}")
        for method in (*methods, "random"):
            row = report[method]
            print(f"{method:<22}" + "".join(f"{row[f'comprehensiveness@{k}']:>10.4f}" for k in (10, 20, 50))
                  + "".join(f"{row[f'sufficiency@{k}']:>10.4f}" for k in (10, 20, 50))
                  + (f"{row['seconds']:>9.3f}" if "seconds" in row else f"{'':>9}"))
        print(f"figures: {out / 'faithfulness.json'}")
        return
    if not (args.text or args.input):
        raise BigModelError("explain needs --text TEXT, --input FILE (or - for stdin), or --evaluate --data FILE")
    lines = iter([args.text] if args.text else input_lines(args.input))
    first = list(itertools.islice(lines, 2))  # a report folder per line when there are several
    if not first:
        raise BigModelError(f"{args.input}: holds no lines to explain")
    for i, text in enumerate(itertools.chain(first, lines), start=1):
        if not text.strip():
            raise BigModelError(f"{args.input}: line {i} is blank; there is nothing in it to explain")
        if classifier:
            explanation = explain_classifier(model, tok, text, args.target or None, args.baseline, args.steps,
                                             methods, args.samples)
        else:
            explanation = explain_next_token(model, tok, text, args.baseline, args.steps, methods, args.samples)
        paths = write_report(explanation, out / str(i) if len(first) > 1 else out)
        print(terminal_view(explanation))
        sums = ", ".join(f"{m} sum {sum(v):+.4f}" for m, v in explanation.attributions.items())
        delta = explanation.convergence_delta
        print(f"{sums} vs score change {explanation.logit_difference:+.4f}"
              + (f" (IG delta {delta:+.1e})" if delta is not None else "") + f"; report {paths['html']}")


def explain_images(args: ExplainConfig, model, out: Path) -> None:
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
