"""English → another language from the translated message catalogs a Debian machine installs
(`/usr/share/locale/<lang>/LC_MESSAGES/*.mo`, one per package), read with the standard library's `gettext`.

Each catalog maps an English UI string (its `msgid`) to its translation. Kept: the text after a context
prefix (`Category\\x04Fonts` → `Fonts`), single-line strings of real words whose placeholders (`%s`,
`%1$d`, `{name}`) all survive into the translation. Dropped, and counted: plural forms, format-only strings,
untranslated or multi-line ones, lost placeholders, and a source seen in an earlier catalog.
"""

from __future__ import annotations

import gettext
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bigmodel.errors import BigModelError

LOCALE = Path("/usr/share/locale")
MAX_CHARS = 200
PLACEHOLDER = re.compile(r"%(?:\d+\$)?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|t)?"
                         r"[diouxXeEfFgGcsp%]|\{\w*\}")
WORD = re.compile(r"[^\W\d_]{2,}")
LANGUAGES = {"zh_CN": "Simplified Chinese", "zh_TW": "Traditional Chinese", "ja": "Japanese", "ko": "Korean",
             "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt_BR": "Brazilian Portuguese",
             "ru": "Russian", "pl": "Polish", "nl": "Dutch", "sv": "Swedish", "tr": "Turkish", "uk": "Ukrainian"}


@dataclass(frozen=True)
class Pair:
    catalog: str  # the package the string comes from: what splits keep apart
    source: str
    target: str


def placeholders(text: str) -> list[str]:
    """The format placeholders of a string, position numbers dropped (`%1$s` → `%s`), sorted."""
    return sorted(re.sub(r"%\d+\$", "%", p) for p in PLACEHOLDER.findall(text))


def language_name(code: str) -> str:
    return LANGUAGES.get(code, code)


def catalog_pairs(target: str, source: str = "en", root: Path = LOCALE) -> tuple[list[Pair], Counter[str]]:
    """Every kept (catalog, English, translation) of language `target`, and how many strings each rule dropped."""
    if source != "en":
        raise BigModelError(f"--source {source}: message catalogs translate from English; use --source en")
    folder = root / target / "LC_MESSAGES"
    files = sorted(folder.glob("*.mo"))
    if not files:
        raise BigModelError(f"{folder}: no translated message catalogs (*.mo) for {target!r} on this machine")
    pairs, dropped, seen = [], Counter[str](), set()
    for path in files:
        try:
            with path.open("rb") as fh:
                catalog = gettext.GNUTranslations(fh)._catalog  # the parsed msgid → msgstr table
        except (OSError, UnicodeDecodeError) as e:
            raise BigModelError(f"{path}: not a readable message catalog ({e})") from None
        for msgid, msgstr in catalog.items():
            if not msgid:  # the catalog's header
                continue
            if isinstance(msgid, tuple):
                dropped["plural form"] += 1
                continue
            text, translation = msgid.split("\x04")[-1].strip(), msgstr.strip()
            reason = ("untranslated" if not translation or translation == text
                      else "multi-line or long" if "\n" in text + translation or len(text) > MAX_CHARS
                      else "format only" if not WORD.search(PLACEHOLDER.sub("", text))
                      else "placeholder lost" if placeholders(text) != placeholders(translation)
                      else "duplicate" if text in seen else "")
            if reason:
                dropped[reason] += 1
                continue
            seen.add(text)
            pairs.append(Pair(path.stem, text, translation))
    return pairs, dropped
