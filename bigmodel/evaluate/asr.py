"""Speech recognition scored as Whisper's authors score it: word and character error rates (`jiwer`) after
their English text normaliser, so that "Mr. Smith's 25 cats" and "mister smith is twenty five cats" are the
same words, and raw (only case and spacing folded) beside them.

The normaliser follows the rules of OpenAI's `EnglishTextNormalizer`: lower case; no bracketed or
parenthesised words and no "um"/"uh"; contractions and titles spelled out; symbols and diacritics dropped;
spoken numbers as digits ("twenty third" → "23rd", "three point five percent" → "3.5%", "five dollars" →
"$5", "one two three" → "123", a lone "one" kept as a word). Not applied: its list of British spellings
(both sides keep their own) and its rarer number forms (fractions, cents, "o'clock"); "ninth" becomes
"9th" (the reference leaves that one word alone). Other languages get
its basic rule: lower case, symbols and diacritics dropped.
"""

from __future__ import annotations

import re
import unicodedata

from bigmodel.evaluate.seq2seq import error_rates

FILLERS = re.compile(r"\b(hmm|mm|mhm|mmm|uh|um)\b")
SPELLED_OUT = [(re.compile(pattern), words) for pattern, words in (
    (r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"), (r"\blet's\b", "let us"), (r"\bain't\b", "aint"),
    (r"\by'all\b", "you all"), (r"\bwanna\b", "want to"), (r"\bgotta\b", "got to"), (r"\bgonna\b", "going to"),
    (r"\bi'ma\b", "i am going to"), (r"\bimma\b", "i am going to"), (r"\bwoulda\b", "would have"),
    (r"\bcoulda\b", "could have"), (r"\bshoulda\b", "should have"), (r"\bma'am\b", "madam"),
    *((rf"\b{short}\b", f"{title} ") for short, title in (
        ("mr", "mister"), ("mrs", "missus"), ("st", "saint"), ("dr", "doctor"), ("prof", "professor"),
        ("capt", "captain"), ("gov", "governor"), ("ald", "alderman"), ("gen", "general"), ("sen", "senator"),
        ("rep", "representative"), ("pres", "president"), ("rev", "reverend"), ("hon", "honorable"),
        ("asst", "assistant"), ("assoc", "associate"), ("lt", "lieutenant"), ("col", "colonel"), ("jr", "junior"),
        ("sr", "senior"), ("esq", "esquire"))),
    (r"'d been\b", " had been"), (r"'s been\b", " has been"), (r"'d gone\b", " had gone"),
    (r"'s gone\b", " has gone"), (r"'d done\b", " had done"), (r"'s got\b", " has got"),
    (r"n't\b", " not"), (r"'re\b", " are"), (r"'s\b", " is"), (r"'d\b", " would"), (r"'ll\b", " will"),
    (r"'t\b", " not"), (r"'ve\b", " have"), (r"'m\b", " am"))]
LETTERS = {"œ": "oe", "ø": "o", "æ": "ae", "ß": "ss", "đ": "d", "ð": "d", "þ": "th", "ł": "l"}  # NFKD keeps these

ONES = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                   "fourteen fifteen sixteen seventeen eighteen nineteen".split())} | {"oh": 0}
TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
SCALES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
ORDINALS = {"first": "one", "second": "two", "third": "three", "fifth": "five", "eighth": "eight", "ninth": "nine",
            "twelfth": "twelve"}
CURRENCIES = {"dollar": "$", "dollars": "$", "pound": "£", "pounds": "£", "euro": "€", "euros": "€"}


def without_symbols(text: str, keep: str = "") -> str:
    """Marks, symbols and punctuation as spaces (except `keep`); letters without their diacritics."""
    out = []
    for char in unicodedata.normalize("NFKD", text):
        if char in keep:
            out.append(char)
        elif char in LETTERS:
            out.append(LETTERS[char])
        elif unicodedata.category(char) == "Mn":
            continue
        else:
            out.append(" " if unicodedata.category(char)[0] in "MSP" else char)
    return "".join(out)


def number_word(word: str) -> tuple[int, str, str] | None:
    """A spoken number word's value, its kind (digit, teen, tens, scale) and the suffix it leaves
    ("st", "th", "s"), or None."""
    suffix = ""
    if word in ORDINALS or word.endswith("th"):
        word, suffix = ORDINALS.get(word) or (word[:-4] + "y" if word.endswith("ieth") else word[:-2]), "th"
    elif word.endswith(("ies", "s")) and word != "ones":
        base = word[:-3] + "y" if word.endswith("ies") else word[:-2] if word.endswith("xes") else word[:-1]
        if base in ONES or base in TENS or base in SCALES:
            word, suffix = base, "s"
    if word in ONES:
        value = ONES[word]
        return value, "digit" if value < 10 else "teen", suffix
    if word in TENS:
        return TENS[word], "tens", suffix
    if word in SCALES:
        return SCALES[word], "scale", suffix
    return None


def ordinal_suffix(value: int) -> str:
    if value % 100 in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(value % 10, "th")


def spoken_numbers(words: list[str]) -> list[str]:
    """Runs of number words as digits: values add up under a scale ("two thousand and five" → 2005), and
    where they cannot ("one two three", "nineteen ninety") their digits are written one after another."""
    out: list[str] = []
    i = 0
    while i < len(words):
        if number_word(words[i]) is None:
            percent = re.fullmatch(r"[0-9.]*[0-9]", words[i]) and words[i + 1:i + 2] == ["percent"]
            out.append(words[i] + "%" if percent else words[i])
            i += 2 if percent else 1
            continue
        written, total, group, last, suffix = "", 0, 0, "", ""
        while i < len(words) and not suffix:
            word = words[i]
            if word == "and" and last in ("scale",) and i + 1 < len(words) and number_word(words[i + 1]):
                i += 1
                continue
            found = number_word(word)
            if found is None:
                break
            value, kind, suffix = found
            if kind == "scale":
                if value == 100:
                    group = (group or 1) * 100 if group < 100 else group * 100
                else:
                    total, group = total + (group or 1) * value, 0
            elif last == "scale" or (last == "tens" and kind == "digit" and group % 10 == 0):
                group += value
            elif last:  # digits after digits, "nineteen ninety": written one after another
                written, total, group = written + str(total + group), 0, value
            else:
                group = value
            last = kind
            i += 1
        number = written + str(total + group)
        if i + 1 < len(words) and words[i] == "point" and not suffix and words[i + 1] in ONES:
            decimals = ""
            while i + 1 < len(words) and words[i + 1] in ONES:
                decimals += str(ONES[words[i + 1]])
                i += 1
            number, i = f"{number}.{decimals}", i + 1
        if suffix == "th":
            suffix = ordinal_suffix(int(number))
        text = number + suffix
        if i < len(words) and words[i] == "percent" and not suffix:
            text, i = text + "%", i + 1
        elif i < len(words) and words[i] in CURRENCIES and not suffix:
            text, i = CURRENCIES[words[i]] + text, i + 1
        out.append("one" + suffix if number == "1" and suffix in ("", "s") else text)
    return out


def normalize_english(text: str) -> str:
    """`text` as Whisper's English normaliser writes it (see the module's docstring)."""
    text = text.lower()
    text = re.sub(r"[<\[][^>\]]*[>\]]", "", text)
    text = re.sub(r"\(([^)]+?)\)", "", text)
    text = FILLERS.sub("", text)
    text = re.sub(r"\s+'", "'", text)
    for pattern, words in SPELLED_OUT:
        text = pattern.sub(words, text)
    text = re.sub(r"(\d),(\d)", r"\1\2", text)
    text = re.sub(r"\.([^0-9]|$)", r" \1", text)
    text = without_symbols(text, keep=".%$¢€£")
    text = " ".join(spoken_numbers(text.split()))
    text = re.sub(r"[.$¢€£]([^0-9])", r" \1", text)
    text = re.sub(r"([^0-9])%", r"\1 ", text)
    return " ".join(text.split())


def normalize_basic(text: str) -> str:
    """Any language: lower case, no bracketed words, symbols and diacritics dropped."""
    text = re.sub(r"[<\[][^>\]]*[>\]]|\(([^)]+?)\)", "", text.lower())
    return " ".join(without_symbols(text).split())


def normalized(text: str, language: str) -> str:
    """English by Whisper's English rules, other languages by its basic ones."""
    return normalize_english(text) if language == "en" else normalize_basic(text)


def file_wer(reference: str, hypothesis: str, language: str) -> float | None:
    """One recording's WER in percent after normalisation (None when the reference has no words left)."""
    reference = normalized(reference, language)
    return round(error_rates([reference], [normalized(hypothesis, language)])["wer"], 2) if reference else None


def asr_figures(references: list[str], hypotheses: list[str], languages: list[str]) -> dict[str, float]:
    """WER/CER after normalisation (English rows by the English rules) and raw (case and spacing folded)."""
    normal_refs = [normalized(r, lang) for r, lang in zip(references, languages, strict=True)]
    normal_hyps = [normalized(h, lang) for h, lang in zip(hypotheses, languages, strict=True)]
    raw = error_rates([" ".join(r.lower().split()) for r in references],
                      [" ".join(h.lower().split()) for h in hypotheses])
    scored = error_rates(normal_refs, normal_hyps)
    return {"wer": scored["wer"], "cer": scored["cer"], "wer_raw": raw["wer"], "cer_raw": raw["cer"],
            "exact_match": scored["exact_match"]}
