"""A model card (Mitchell et al., 2019) from what a checkpoint already holds and what the audits wrote.

The checkpoint's `config.yaml` gives the run (data files, settings, validation figures, DP's budget,
the compute it spent); `evaluations.json` beside it gathers what `evaluate`, `audit` and `explain
--evaluate` measured on it since (`record`). The card is a list of sections rendered as Markdown or one
HTML page; a section with nothing measured says which command fills it. `figures` flattens the numbers
into the names `registry alias --require` checks.
"""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigmodel import disk
from bigmodel.errors import BigModelError

EVALUATIONS = "evaluations.json"
WATTS_PER_CORE, WATTS_PER_GB = 12.0, 0.3725  # Green Algorithms' defaults (Lannelongue et al., 2021)
REQUIREMENT = re.compile(r"^\s*([\w.@]+)\s*(>=|<=|==|>|<)\s*([-+]?[\d.]+(?:e[-+]?\d+)?)\s*$", re.IGNORECASE)


def record(folder: Path, kind: str, figures: dict[str, Any]) -> None:
    """Keep `figures` as the checkpoint's latest `kind` measurement (written to a temporary file, then renamed)."""
    path = folder / EVALUATIONS
    known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    known[kind] = {**figures, "measured": time.strftime("%Y-%m-%d %H:%M")}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(known, indent=2, ensure_ascii=False), encoding="utf-8")
    disk.replace(tmp, path)


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)  # a table, when there is one
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class Card:
    title: str
    sections: list[Section]
    figures: dict[str, float]

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for s in self.sections:
            lines += [f"## {s.title}", ""]
            for p in s.paragraphs:
                lines += [p, ""]
            if s.header:
                lines += ["| " + " | ".join(s.header) + " |", "|" + " --- |" * len(s.header)]
                lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in s.rows] + [""]
        return "\n".join(lines)

    def html(self) -> str:
        def table(s: Section) -> str:
            if not s.header:
                return ""
            head = "".join(f"<th>{html.escape(h)}</th>" for h in s.header)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in s.rows)
            return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

        sections = "".join(f'<section id="{re.sub(r"[^a-z]+", "-", s.title.lower())}"><h2>{html.escape(s.title)}</h2>'
                           + "".join(f"<p>{inline(p)}</p>" for p in s.paragraphs) + table(s) + "</section>"
                           for s in self.sections)
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;line-height:1.45}}
table{{border-collapse:collapse;margin:.5em 0 1em}} td,th{{border:1px solid #ccc;padding:3px 10px;text-align:left}}
code{{background:#f3f3f3;padding:1px 4px;border-radius:3px}}</style></head>
<body><h1>{html.escape(self.title)}</h1>{sections}</body></html>
"""


def inline(text: str) -> str:
    """A Markdown paragraph's `code` and **bold** as HTML, the rest escaped."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def build(folder: Path, sections: dict[str, Any], params: int, head: Any | None) -> Card:
    """The card of the checkpoint in `folder`: `sections` is its config.yaml, `head` its HeadConfig (or None)."""
    measured = json.loads((folder / EVALUATIONS).read_text(encoding="utf-8")) if (folder / EVALUATIONS).is_file() \
        else {}
    shape = json.loads((folder / "model.json").read_text())
    run = sections.get("finetune") or sections.get("train") or {}
    figures: dict[str, float] = {"params": float(params)}
    parts = [model_section(shape, params, head, sections), data_section(sections, run),
             compute_section(sections.get("compute"), params, figures),
             metrics_section(sections.get("val") or {}, measured.get("evaluation"), figures, sections.get("start")),
             privacy_section(sections.get("privacy"), measured.get("membership"), folder, figures),
             explanation_section(measured.get("faithfulness"), folder, figures),
             fairness_section(measured.get("fairness"), folder, figures)]
    name = Path(run.get("out") or folder).name if run else folder.name
    card = Card(f"Model card: {name}", parts, figures)
    card.sections.append(Section("Figures for promotion gates", [
        "`bigmodel registry alias --require \"accuracy>=0.85,mia_auc<=0.6\"` checks these names."],
        ["name", "value"], [[k, f"{v:.6g}"] for k, v in sorted(figures.items())]))
    return card


def model_section(shape: dict, params: int, head: Any | None, sections: dict) -> Section:
    kind = ("encoder-decoder" if shape["encoder_layers"] else "decoder" if shape["causal"] else "encoder")
    frontend = {"tokens": "text", "patches": "images (patches)", "mel": "audio (log-mel frames)"}[shape["frontend"]]
    lines = [f"{'An' if kind[0] in 'ae' else 'A'} {kind} Transformer over {frontend}: {shape['n_layer']} layers"
             + (f" (+{shape['encoder_layers']} encoder layers)" if shape["encoder_layers"] else "")
             + f", width {shape['n_embd']}, {shape['n_head']} heads ({shape['n_kv_head']} key/value), context "
             f"{shape['block_size']}, vocabulary {shape['vocab_size']:,}; {shape['positions']} positions, "
             f"{shape['norm']}, {shape['mlp']} MLP; **{params / 1e6:.1f}M parameters**."]
    if head is not None:
        what = f"labels {', '.join(head.labels)}" if head.labels else "one value"
        lines.append(f"Head: {head.task} ({what}).")
    run = sections.get("finetune") or {}
    if run.get("init"):
        lines.append(f"Fine-tuned from `{run['init']}` ({run.get('method', 'full')}, task {run.get('task')}).")
    elif sections.get("converted_from"):
        lines.append(f"Converted from `{sections['converted_from']}`.")
    elif sections.get("model"):
        lines.append("Trained from scratch (shape from the recipe's model: section).")
    return Section("Model", lines)


def data_section(sections: dict, run: dict) -> Section:
    s = Section("Training data")
    if "finetune" in sections:
        limit = f", the first {run['max_train']:,} examples" if run.get("max_train") else ""
        s.paragraphs.append(f"Fine-tuning data: `{run.get('train')}`{limit}; validation `{run.get('val')}`"
                            + (f" (text column `{run['text_column']}`, label column `{run['label_column']}`)."
                               if run.get("task") in ("classify", "regress") else "."))
    meta = corpus_meta(sections)
    if meta is None:
        s.paragraphs.append("Cleaning counts: none recorded; the files were read as given. `bigmodel prepare` "
                            "records them (duplicates, empty documents, control characters, and with `--scrub-pii` "
                            "personal data per kind) for a corpus a model is pretrained on.")
        return s
    path, meta = meta
    clean = meta.get("cleaning", {})
    s.paragraphs.append(f"Pretraining corpus `{path}`: {meta.get('train_tokens', 0):,} training and "
                        f"{meta.get('val_tokens', 0):,} validation tokens, tokenizer vocabulary "
                        f"{meta.get('vocab_size', 0):,}.")
    s.header = ["cleaning step", "count"]
    s.rows = [[k.replace("_", " "), f"{v:,}"] for k, v in clean.items() if isinstance(v, int)]
    s.rows += [[f"personal data replaced: {k}", f"{v:,}"] for k, v in (clean.get("pii_replaced") or {}).items()]
    if "pii_replaced" not in clean:
        s.paragraphs.append("Personal data was not scrubbed (`bigmodel prepare --scrub-pii` would).")
    return s


def corpus_meta(sections: dict) -> tuple[str, dict] | None:
    """The `prepare` record of the corpus this model was pretrained on, followed back through `--init` (a
    fine-tune of a continued pretraining of ...) a few checkpoints deep."""
    import yaml

    from bigmodel.model.folders import RUN_CONFIG, resolve_checkpoint

    for _ in range(5):
        data = (sections.get("train") or {}).get("data")
        if data and (Path(data) / "meta.json").is_file():
            return data, json.loads((Path(data) / "meta.json").read_text())
        init = (sections.get("finetune") or {}).get("init") or (sections.get("train") or {}).get("init")
        try:
            config = resolve_checkpoint(init) / RUN_CONFIG if init else None
        except BigModelError:  # a packaged short name or a Hugging Face folder: no record of its corpus here
            return None
        if config is None or not config.is_file():
            return None
        sections = yaml.safe_load(config.read_text()) or {}
    return None


def compute_section(compute: dict | None, params: int, figures: dict[str, float]) -> Section:
    s = Section("Training compute")
    if not compute:
        s.paragraphs.append("Not recorded: this checkpoint predates compute accounting or was not trained here.")
        return s
    tokens = compute.get("tokens", 0)
    flops = 6 * params * tokens
    cores = compute.get("threads", 1) * compute.get("processes", 1)
    hours = compute["seconds"] / 3600
    watts = cores * WATTS_PER_CORE + compute.get("peak_rss_gb", 0) * WATTS_PER_GB
    kwh = hours * watts / 1000
    figures.update({"train_seconds": compute["seconds"], "flops": float(flops), "energy_kwh": kwh})
    s.header = ["figure", "value"]
    s.rows = [["wall time", f"{compute['seconds'] / 60:.1f} min ({compute['steps']:,} steps)"],
              ["tokens trained on", f"{tokens:,}" + (f" ({compute['examples']:,} examples)" if "examples" in compute
                                                      else "")],
              ["machine", f"{compute.get('cpu', '?')} ({compute.get('capability', '?')}), {compute.get('device')}, "
                          f"{compute.get('processes', 1)} process(es) × {compute.get('threads', '?')} threads"],
              ["CPU core-hours", f"{hours * cores:.3f}"],
              ["training FLOPs (estimate)", f"{flops:.3g}"],
              ["energy (estimate)", f"{kwh * 1000:.1f} Wh"]]
    s.paragraphs.append("FLOPs ≈ 6 × parameters × tokens (forward and backward through every weight; attention's "
                        "quadratic term left out). Energy as Green Algorithms estimates it (Lannelongue et al., 2021): "
                        f"time × (cores in use × {WATTS_PER_CORE:g} W + peak memory × {WATTS_PER_GB} W/GB), no "
                        "data-centre overhead (PUE 1); a rough figure, not a meter reading.")
    return s


def metrics_section(val: dict, evaluation: dict | None, figures: dict[str, float], start: dict | None = None
                    ) -> Section:
    """The validation figures of the kept checkpoint, beside the starting model's (a fine-tune measures it at
    step 0), so "better than where it began" can be read; then the held-out evaluation the gates read."""
    s = Section("Evaluation")
    skipped = ("step", "epoch", "lr", "examples_per_s", "elapsed_s", "train_loss")
    shown = {k: v for k, v in val.items() if isinstance(v, int | float) and k not in skipped}
    figures.update({f"val_{k}" if not k.startswith("val_") else k: float(v) for k, v in shown.items()})
    figures.update({k: float(v) for k, v in shown.items() if not k.startswith("val_")})
    if val:
        s.paragraphs.append(f"On the validation file at the kept checkpoint (step {val.get('step')}): "
                            + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()) + ".")
    began = {k: v for k, v in (start or {}).items() if isinstance(v, int | float) and k not in skipped}
    if began:
        s.paragraphs.append("Before fine-tuning, the starting model scored " + ", ".join(
            f"{k} {v:.4f}" for k, v in began.items()) + (" (the kept checkpoint is that model: no evaluation beat it)"
                                                       if val.get("step") == 0 else "") + ".")
    if evaluation:
        numbers = {k: v for k, v in evaluation.items() if isinstance(v, int | float)}
        figures.update({k: float(v) for k, v in numbers.items() if k != "examples"})
        s.paragraphs.append(f"`bigmodel evaluate` on `{evaluation.get('data')}` ({evaluation.get('examples')} "
                            "examples): " + ", ".join(f"{k} {v:.4f}" for k, v in numbers.items() if k != "examples")
                            + ". These are the `accuracy`/`macro_f1` the gates read.")
    else:
        s.paragraphs.append("No held-out evaluation recorded: `bigmodel evaluate --task classify --ckpt DIR --data "
                            "FILE` adds one (the gates then read it instead of the validation figures).")
    return s


def privacy_section(dp: dict | None, membership: dict | None, folder: Path, figures: dict[str, float]) -> Section:
    s = Section("Privacy")
    if dp:
        figures.update({"epsilon": float(dp["epsilon"]), "delta": float(dp["delta"])})
        s.paragraphs.append(f"Trained with DP-SGD: (ε = {dp['epsilon']:.3f}, δ = {dp['delta']:g}), per-example "
                            f"gradients clipped to {dp.get('max_grad_norm')}, noise multiplier "
                            f"{dp.get('noise_multiplier', float('nan')):.3f}.")
    else:
        s.paragraphs.append("Trained without differential privacy (no ε to state); `bigmodel finetune --dp-epsilon "
                            "E` trains with DP-SGD.")
    if membership:
        figures.update({"mia_auc": membership["auc"], "mia_tpr_at_1pct_fpr": membership["tpr_at_1pct_fpr"]})
        s.paragraphs.append(f"Membership inference (loss attack) on {membership['members']} training and "
                            f"{membership['non_members']} held-out examples: AUC **{membership['auc']:.3f}** (0.5: "
                            f"nothing leaks), true-positive rate at 1% false positives "
                            f"{membership['tpr_at_1pct_fpr']:.3f}.")
        return s
    return unmeasured(s, "Membership inference", f"bigmodel audit --ckpt {folder} --train TRAIN --holdout HELD_OUT")


def unmeasured(section: Section, what: str, command: str) -> Section:
    """The section, saying what was not measured and the command that measures it."""
    section.paragraphs.append(f"{what} not measured: `{command}`.")
    return section


def explanation_section(faithful: dict | None, folder: Path, figures: dict[str, float]) -> Section:
    s = Section("Explanations")
    if not faithful:
        return unmeasured(s, "Faithfulness", f"bigmodel explain --ckpt {folder} --evaluate --data FILE --method all")
    methods = [m for m in faithful if m not in ("texts", "data", "measured")]
    s.paragraphs.append(f"ERASER faithfulness on {faithful['texts']['count']} texts of `{faithful.get('data')}`: the "
                        "predicted class's probability drop with the top 20% attributed tokens deleted "
                        "(comprehensiveness, higher is better) or kept alone (sufficiency, lower is better); random "
                        "tokens are the floor.")
    s.header = ["method", "comprehensiveness@20", "sufficiency@20", "seconds per text"]
    for m in methods:
        row = faithful[m]
        figures[f"{m}.comprehensiveness@20"] = row["comprehensiveness@20"]
        s.rows.append([m, f"{row['comprehensiveness@20']:.3f}", f"{row['sufficiency@20']:.3f}",
                       f"{row['seconds']:.3f}" if "seconds" in row else "-"])
    return s


def fairness_section(fair: dict | None, folder: Path, figures: dict[str, float]) -> Section:
    s = Section("Fairness")
    if not fair:
        return unmeasured(s, "Fairness", f"bigmodel audit --fairness --ckpt {folder} --data FILE --swap en` (or "
                          "`--swap zh`, a pair file, or `--group-column COL`")
    s.paragraphs.append(f"On `{fair.get('data')}`, groups by {fair.get('grouped_by')}.")
    s.header = ["group", "texts", "accuracy", "macro-F1", "positive rate (predicted)", "positive rate (labels)"]
    s.rows = [[g, str(v["count"]), f"{v['accuracy']:.3f}", f"{v['macro_f1']:.3f}", f"{v['positive_rate']:.3f}",
               f"{v['base_rate']:.3f}"] for g, v in fair["groups"].items()]
    for name, gap in fair.get("gaps", {}).items():
        figures[f"{name}_gap"] = gap["gap"]
        s.paragraphs.append(f"Largest {name.replace('_', ' ')} gap: {gap['gap']:.3f} ({gap['highest']} over "
                            f"{gap['lowest']}).")
    swap = fair.get("counterfactual")
    if swap and swap.get("rewritten"):
        figures.update({"flip_rate": swap["flip_rate"], "mean_abs_shift": swap["mean_abs_shift"]})
        s.paragraphs.append(f"Counterfactual test ({swap['list']} swap list): {swap['rewritten']} texts rewritten, "
                            f"the label flips on **{swap['flip_rate']:.1%}** ({swap['flips']}); the predicted class's "
                            f"probability moves by {swap['mean_shift']:+.4f} on average ({swap['mean_abs_shift']:.4f} "
                            "in absolute value).")
        if swap["worst"]:
            w = swap["worst"][0]
            s.paragraphs.append(f"Moved most: “{w['text'][:120]}” → “{w['swapped'][:120]}”: the probability of "
                                f"label {w['label']} {w['probability']:.3f} → {w['swapped_probability']:.3f}.")
    elif swap is not None:
        s.paragraphs.append("Counterfactual test: no text mentions a word of the swap list.")
    return s


def requirements(spec: str) -> list[tuple[str, str, float]]:
    """`"accuracy>=0.85,mia_auc<=0.6"` as (name, operator, bound) triples; a bad clause is named."""
    found = []
    for clause in spec.split(","):
        match = REQUIREMENT.match(clause)
        if not match:
            raise BigModelError(f"--require: {clause.strip()!r} is not NAME>=NUMBER (or <=, >, <, ==)")
        found.append((match.group(1), match.group(2), float(match.group(3))))
    return found


def unmet(figures: dict[str, float], spec: str) -> list[str]:
    """Each requirement of `spec` the figures fail (or lack), as a phrase."""
    compare = {">=": float.__ge__, "<=": float.__le__, ">": float.__gt__, "<": float.__lt__, "==": float.__eq__}
    failed = []
    for name, op, bound in requirements(spec):
        if name not in figures:
            failed.append(f"{name} not measured")
        elif not compare[op](float(figures[name]), bound):
            failed.append(f"{name} {figures[name]:.4g} (needs {op}{bound:g})")
    return failed
