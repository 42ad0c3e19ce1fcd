"""Explanations people can look at: attention heatmaps (PNG), one self-contained HTML page, a
coloured terminal line. The numbers themselves go out as JSON (`Explanation.to_dict`)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from bigmodel.errors import BigModelError
from bigmodel.infer.explain import Explanation

CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Source Han Sans SC",
             "AR PL UMing CN", "Droid Sans Fallback")
CJK_FILES = ("wqy", "notosanscjk", "notoserifcjk", "sourcehan", "uming", "droidsansfallback")


def needs_cjk(tokens: list[str]) -> bool:
    return any("\u2e80" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af" or "\uf900" <= ch <= "\ufaff"
               for token in tokens for ch in token)


def font_family(tokens: list[str]) -> list[str]:
    """Fonts for the figures: DejaVu Sans, with a CJK-capable one in front when the tokens need it."""
    from matplotlib import font_manager

    if not needs_cjk(tokens):
        return ["DejaVu Sans"]

    def installed() -> str | None:
        names = {f.name for f in font_manager.fontManager.ttflist}
        return next((name for name in CJK_FONTS if name in names), None)

    if installed() is None:  # installed after matplotlib cached its font list: register the files themselves
        for path in font_manager.findSystemFonts():
            if any(part in path.lower() for part in CJK_FILES):
                font_manager.fontManager.addfont(path)
    cjk = installed()
    if cjk is None:
        raise BigModelError("the text has CJK characters but no CJK font is installed for the figures "
                            "(Debian: apt-get install fonts-wqy-microhei)")
    return [cjk, "DejaVu Sans"]


def attention_figure(explanation: Explanation) -> bytes:
    """PNG: the rollout and the last layer's head-averaged attention, labelled with the real tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = explanation.tokens
    size = min(14.0, 3.0 + 0.32 * len(tokens))
    panels = {"attention rollout (all layers)": explanation.rollout,
              f"layer {len(explanation.attention)} attention (mean of heads)": explanation.attention[-1].mean(0)}
    with plt.rc_context({"font.family": font_family(tokens)}):
        fig, axes = plt.subplots(1, 2, figsize=(2 * size, size), dpi=100)
        for ax, (title, grid) in zip(axes, panels.items(), strict=True):
            ax.imshow(grid, cmap="viridis", vmin=0)
            ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=8)
            ax.set_yticks(range(len(tokens)), tokens, fontsize=8)
            ax.set(title=title, xlabel="attended token", ylabel="attending position")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
    return buffer.getvalue()


def heads_figure(explanation: Explanation) -> bytes:
    """PNG: every layer × head attention map, small multiples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, heads = explanation.attention.shape[:2]
    with plt.rc_context({"font.family": font_family(explanation.tokens)}):
        fig, axes = plt.subplots(layers, heads, figsize=(1.6 * heads + 1, 1.6 * layers + 1), dpi=100, squeeze=False)
        for (layer, head), ax in np.ndenumerate(np.array(axes, dtype=object)):
            ax.imshow(explanation.attention[layer, head], cmap="viridis", vmin=0)
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head + 1}", fontsize=8)
            if head == 0:
                ax.set_ylabel(f"layer {layer + 1}", fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
    return buffer.getvalue()


def shade(value: float, scale: float) -> str:
    """Green for support of the target, red against it, transparent near zero."""
    alpha = min(1.0, abs(value) / scale) if scale else 0.0
    return f"rgba(22,163,74,{alpha:.2f})" if value >= 0 else f"rgba(220,38,38,{alpha:.2f})"


def html_report(explanation: Explanation, figures: dict[str, bytes]) -> str:
    """One HTML file, no external assets: shaded tokens per method, the prediction, the figures inline."""
    e = explanation

    def tokens_row(values: list[float]) -> str:
        scale = max((abs(v) for v in values), default=0.0)
        return "".join(f'<span class="tok" style="background:{shade(v, scale)}" title="{v:+.4f}">'
                       f"{html.escape(t)}</span>" for t, v in zip(e.tokens, values, strict=True))

    about = {
        "integrated_gradients": (
            "Integrated gradients", f"Sum {sum(e.attributions.get('integrated_gradients', [])):+.4f}"
            f"; the target's score moves by {e.logit_difference:+.4f} from the baseline text; "
            f"Captum's convergence delta {e.convergence_delta or 0:+.2e}."),
        "occlusion": ("Occlusion", "The score's drop when that token alone is replaced by the baseline's."),
        "lime": ("LIME", "A linear model of the score on random token subsets, weighed by closeness to the text."),
        "kernel_shap": ("Kernel SHAP", "The same on the Shapley kernel's weights: estimates of Shapley values."),
    }
    sections = "".join(f"<h2>{about[m][0]}</h2><p>{tokens_row(v)}</p><p>{html.escape(about[m][1])} Green supports "
                       f"“{html.escape(e.target)}”, red opposes it.</p>" for m, v in e.attributions.items())
    probabilities = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in e.probabilities.items())
    images = "".join(f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" '
                     f'src="data:image/png;base64,{base64.b64encode(png).decode()}">' for name, png in figures.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bigmodel explain: {html.escape(e.target)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
.tok{{display:inline-block;padding:2px 3px;margin:1px;border-radius:3px;font-family:monospace}}
td{{padding:2px 12px}} img{{max-width:100%}}</style></head><body>
<h1>Why “{html.escape(e.target)}”</h1>
<p>{html.escape(e.text)}</p>
<table><tr><th>label</th><th>probability</th></tr>{probabilities}</table>
{sections}
{images}
</body></html>
"""


def terminal_view(explanation: Explanation) -> str:
    """The tokens on one line, backgrounds shaded by the first method's attributions (ANSI 24-bit colour)."""
    e = explanation
    values = next(iter(e.attributions.values()))
    scale = max((abs(v) for v in values), default=0.0) or 1.0
    cells = []
    for token, value in zip(e.tokens, values, strict=True):
        strength = min(1.0, abs(value) / scale)
        r, g, b = (int(255 - 200 * strength), 255, int(255 - 200 * strength)) if value >= 0 else \
            (255, int(255 - 200 * strength), int(255 - 200 * strength))
        cells.append(f"\x1b[48;2;{r};{g};{b}m\x1b[30m{token}\x1b[0m")
    shown = ", ".join(f"{k} {v:.3f}" for k, v in e.probabilities.items())
    return f"{e.target} ({shown})\n{' '.join(cells)}"


def write_report(explanation: Explanation, out: Path) -> dict[str, Path]:
    """explanation.json, attention.png, heads.png and report.html in `out`; their paths."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    figures = {"attention": attention_figure(explanation), "every layer and head": heads_figure(explanation)}
    paths = {"json": out / "explanation.json", "attention": out / "attention.png", "heads": out / "heads.png",
             "html": out / "report.html"}
    paths["json"].write_text(json.dumps(explanation.to_dict(), ensure_ascii=False), encoding="utf-8")
    paths["attention"].write_bytes(figures["attention"])
    paths["heads"].write_bytes(figures["every layer and head"])
    paths["html"].write_text(html_report(explanation, figures), encoding="utf-8")
    return paths
