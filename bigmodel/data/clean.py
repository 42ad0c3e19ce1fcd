"""Text cleaning: Unicode NFC, control characters, exact duplicates, personal data.

Each step counts what it changed, so `meta.json` can say what happened to the corpus.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

# Control characters (Unicode category Cc) except tab and newline; \r\n and \r become \n first.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

# Ordered: long digit runs (ID cards, card numbers) are claimed before phone numbers can be.
_PII_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("EMAIL", re.compile(r"\b[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")),
    ("ID_CN", re.compile(r"(?<![0-9])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
                         r"\d{3}[\dXx](?![0-9A-Za-z])")),
    ("CARD", re.compile(r"(?<![0-9])(?:\d[ -]?){12,18}\d(?![0-9])")),
    ("IP", re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                      r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])")),
    ("PHONE", re.compile(
        r"(?<![\w+])(?:"
        r"(?:\+?86[ -]?)?1[3-9]\d[ -]?\d{4}[ -]?\d{4}"  # Chinese mobile
        r"|\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,3}"  # international
        r"|\(?\d{3}\)?[ .-]?\d{3}[ .-]\d{4}"  # North American
        r")(?!\w)")),
]


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _cn_id_ok(number: str) -> bool:
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    check = "10X98765432"[sum(int(c) * w for c, w in zip(number[:17], weights, strict=True)) % 11]
    return number[17].upper() == check


_VALIDATORS = {
    "CARD": lambda s: _luhn_ok(re.sub(r"[ -]", "", s)),
    "ID_CN": _cn_id_ok,
}


def scrub_pii(text: str, counts: Counter) -> str:
    """Replace personal data with typed placeholders such as `<EMAIL>`; count each type."""
    for kind, pattern in _PII_PATTERNS:
        valid = _VALIDATORS.get(kind)

        def replace(m: re.Match[str], kind: str = kind, valid=valid) -> str:
            if valid is not None and not valid(m.group(0)):
                return m.group(0)
            counts[kind] += 1
            return f"<{kind}>"

        text = pattern.sub(replace, text)
    return text


@dataclass
class Cleaner:
    """Stateful cleaner: remembers document hashes for exact dedup and keeps the counts."""

    dedup: bool = True
    scrub: bool = False
    counts: Counter = field(default_factory=Counter)
    pii: Counter = field(default_factory=Counter)
    _seen: set[bytes] = field(default_factory=set)

    def __call__(self, text: str) -> str | None:
        """The cleaned text, or None when the document is dropped (empty or a duplicate)."""
        self.counts["documents_in"] += 1
        normalised = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
        if normalised != text:
            self.counts["normalised"] += 1
        text, removed = _CONTROL.subn("", normalised)
        self.counts["control_chars_removed"] += removed
        if self.scrub:
            text = scrub_pii(text, self.pii)
        if not text.strip():
            self.counts["empty_dropped"] += 1
            return None
        if self.dedup:
            key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
            if key in self._seen:
                self.counts["duplicates_dropped"] += 1
                return None
            self._seen.add(key)
        self.counts["documents_kept"] += 1
        return text

    def report(self) -> dict:
        keys = ("documents_in", "documents_kept", "duplicates_dropped", "empty_dropped",
                "normalised", "control_chars_removed")
        out = {k: self.counts[k] for k in keys}
        if self.scrub:
            out["pii_replaced"] = {k: self.pii[k] for k, _ in _PII_PATTERNS}
        return out
