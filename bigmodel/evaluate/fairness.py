"""Does a classifier treat groups of people alike? Two checks, both on labelled texts.

- Per group (a column of the data, or which side of a swap list a text mentions): accuracy, macro-F1
  and the positive rate (how often the positive label is predicted), and the largest gap between groups.
- Counterfactual (Kusner et al., 2017; Garg et al., 2019): every text that mentions a listed word is
  rewritten with each word swapped for its counterpart (he ↔ she, 他 ↔ 她); a fair model gives the same
  label. Reported: the flip rate, the mean shift of the originally predicted class's probability, and
  the examples that moved most.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from bigmodel.errors import BigModelError

# Pairs are (one side, the other). A word on several lines swaps by its first: "her" -> "his".
ENGLISH = """he she
his her
him her
himself herself
man woman
men women
boy girl
boys girls
father mother
fathers mothers
dad mom
son daughter
sons daughters
brother sister
brothers sisters
husband wife
husbands wives
boyfriend girlfriend
king queen
prince princess
uncle aunt
nephew niece
grandfather grandmother
gentleman lady
gentlemen ladies
mr mrs
sir madam
actor actress
actors actresses
male female
males females
masculine feminine
john mary
james linda
michael susan
david sarah
robert jennifer
tom anna
"""
CHINESE = """他们 她们
他 她
男朋友 女朋友
男友 女友
男人 女人
男孩 女孩
男生 女生
男士 女士
先生 女士
丈夫 妻子
老公 老婆
父亲 母亲
爸爸 妈妈
儿子 女儿
哥哥 姐姐
弟弟 妹妹
爷爷 奶奶
叔叔 阿姨
新郎 新娘
王子 公主
国王 王后
帅哥 美女
男 女
"""
BUILT_IN = {"en": ENGLISH, "zh": CHINESE}
NOT_A_PRONOUN = "其吉"  # 其他 (other), 吉他 (guitar): a 他 that is no "he"


@dataclass
class SwapList:
    """Word pairs and the rewriting they define; `sides` says which group each listed word names."""

    pairs: list[tuple[str, str]]
    source: str  # "en", "zh" or the file it came from

    def __post_init__(self) -> None:
        self.mapping: dict[str, str] = {}
        self.sides: dict[str, str] = {}
        for a, b in self.pairs:
            for word, other, side in ((a, b, "first"), (b, a, "second")):
                self.mapping.setdefault(word.lower(), other)
                self.sides.setdefault(word.lower(), side)
        words = sorted(self.mapping, key=len, reverse=True)  # longest first: 男朋友 before 男
        cjk = [w for w in words if not w.isascii()]
        latin = [re.escape(w) for w in words if w.isascii()]
        parts = [rf"\b(?:{'|'.join(latin)})\b"] if latin else []
        parts += [rf"(?<![{NOT_A_PRONOUN}]){re.escape(w)}" if w == "他" else re.escape(w) for w in cjk]
        self.pattern = re.compile("|".join(parts), re.IGNORECASE)
        self.names = tuple("/".join(dict.fromkeys(pair[i] for pair in self.pairs[:2])) + "…" for i in (0, 1))

    def swap(self, text: str) -> str:
        """The text with every listed word replaced by its counterpart, keeping Capitals and CAPITALS."""
        def replace(match: re.Match) -> str:
            word = match.group(0)
            other = self.mapping[word.lower()]
            if word.isupper() and len(word) > 1:
                return other.upper()
            return other[:1].upper() + other[1:] if word[:1].isupper() else other
        return self.pattern.sub(replace, text)

    def group(self, text: str) -> str:
        """Which side the text mentions: the first side's words, the second's, both or neither."""
        found = {self.sides[m.group(0).lower()] for m in self.pattern.finditer(text)}
        return {frozenset({"first"}): f"mentions {self.names[0]}", frozenset({"second"}): f"mentions {self.names[1]}",
                frozenset({"first", "second"}): "mentions both"}.get(frozenset(found), "mentions neither")


def swap_list(spec: str) -> SwapList:
    """`en`, `zh` or a UTF-8 file of pairs, one per line (two words split by a tab or spaces; # comments)."""
    if spec in BUILT_IN:
        text, source = BUILT_IN[spec], spec
    else:
        path = Path(spec)
        if not path.is_file():
            raise BigModelError(f"--swap {spec}: neither a built-in list (en, zh) nor a file")
        text, source = path.read_text(encoding="utf-8"), str(path)
    pairs = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2 or words[0].lower() == words[1].lower():
            raise BigModelError(f"{source}:{lineno}: a swap line holds two different words separated by a tab or "
                                f"spaces, found {len(words)}: {line.strip()[:60]!r}")
        pairs.append((words[0], words[1]))
    if not pairs:
        raise BigModelError(f"{source}: no word pairs to swap")
    return SwapList(pairs, source)


def group_figures(y_true: list[int], y_pred: list[int], groups: list[str], labels: list[str], positive: int,
                  min_size: int = 10) -> dict:
    """Accuracy, macro-F1 and positive rate per group (beside the base rate, the share labelled positive: a
    positive-rate gap the labels share is the data's, not the model's), and per figure the largest gap
    between groups of at least `min_size` texts (smaller groups are listed but too noisy to compare)."""
    true, pred = np.array(y_true), np.array(y_pred)
    ids = list(range(len(labels)))
    per_group = {}
    for name in sorted(set(groups)):
        rows = np.array([g == name for g in groups])
        per_group[name] = {"count": int(rows.sum()), "accuracy": float(accuracy_score(true[rows], pred[rows])),
                           "macro_f1": float(f1_score(true[rows], pred[rows], labels=ids, average="macro",
                                                      zero_division=0)),
                           "positive_rate": float((pred[rows] == positive).mean()),
                           "base_rate": float((true[rows] == positive).mean())}
    compared = {k: v for k, v in per_group.items() if v["count"] >= min_size}
    gaps = {}
    for figure in ("accuracy", "macro_f1", "positive_rate"):
        if len(compared) >= 2:
            high = max(compared, key=lambda g: compared[g][figure])
            low = min(compared, key=lambda g: compared[g][figure])
            gaps[figure] = {"gap": compared[high][figure] - compared[low][figure], "highest": high, "lowest": low}
    return {"groups": per_group, "gaps": gaps, "min_group_size": min_size}


def counterfactual(texts: list[str], swaps: SwapList, probabilities: Callable[[list[str]], np.ndarray],
                   labels: list[str], worst: int = 5) -> dict:
    """Flip rate and probability shift when each text mentioning a listed word has them all swapped."""
    changed = [(t, s) for t in texts if (s := swaps.swap(t)) != t]
    if not changed:
        return {"rewritten": 0, "flip_rate": None, "mean_shift": None, "mean_abs_shift": None, "worst": []}
    before = probabilities([t for t, _ in changed])
    after = probabilities([s for _, s in changed])
    predicted = before.argmax(-1)
    shift = before[np.arange(len(changed)), predicted] - after[np.arange(len(changed)), predicted]
    flips = predicted != after.argmax(-1)
    order = np.argsort(-np.abs(shift))[:worst]
    return {
        "rewritten": len(changed), "flip_rate": float(flips.mean()), "flips": int(flips.sum()),
        "mean_shift": float(shift.mean()), "mean_abs_shift": float(np.abs(shift).mean()),
        "worst": [{"text": changed[i][0], "swapped": changed[i][1], "label": labels[int(predicted[i])],
                   "probability": float(before[i, predicted[i]]), "swapped_probability":
                   float(after[i, predicted[i]]), "swapped_label": labels[int(after[i].argmax())]} for i in order],
    }


def plot_groups(report: dict, out: Path, title: str) -> None:
    """Accuracy, macro-F1 and the predicted and labelled positive rates side by side for each group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bigmodel.infer.report import font_family

    groups = report["groups"]
    names = list(groups)
    matplotlib.rcParams["font.family"] = font_family(names)
    figures = ("accuracy", "macro_f1", "positive_rate", "base_rate")
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names) + 2), 4))
    width = 0.8 / len(figures)
    for i, figure in enumerate(figures):
        ax.bar(np.arange(len(names)) + i * width, [groups[n][figure] for n in names], width,
               label={"base_rate": "positive rate (labels)", "positive_rate": "positive rate (predicted)"}.get(
                   figure, figure))
    ax.set_xticks(np.arange(len(names)) + 1.5 * width, [f"{n}\n(n={groups[n]['count']})" for n in names], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
