"""Speech to text with a CTC head, from per-frame character scores.

Greedy decoding takes the best character per frame, merges repeats and drops blanks: it spells
by ear and splits words wherever a frame suggests a space. Lexicon decoding is a CTC prefix beam
search that may only spell words of a vocabulary, each scored by a word bigram model of the
training transcripts (`WordModel`); on a closed vocabulary, such as dictation of known words,
it corrects most of what greedy decoding misspells.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from bigmodel.data.inputs import AudioInputs, batches
from bigmodel.device import autocast

BLANK = "<blank>"  # output 0: "no new character here"


def normalize(text: str) -> str:
    """What transcripts are compared as: lower case, single spaces."""
    return " ".join(text.lower().split())


def greedy_decode(scores: torch.Tensor, length: int, alphabet: list[str]) -> str:
    """The transcript of one clip's (frames, characters) scores over its first `length` frames."""
    best = scores[:length].argmax(-1).tolist()
    return "".join(alphabet[b] for i, b in enumerate(best) if b != 0 and (i == 0 or b != best[i - 1]))


END = "$"  # marks a trie node where a word ends
START = "<s>"  # the word before a transcript's first


@dataclass
class WordModel:
    """The words transcripts may use, in a character trie, and a bigram model of how likely each
    follows the one before: counts smoothed towards the words' own frequencies (add-k, k = `smoothing`)."""

    counts: Counter
    pairs: Counter
    smoothing: float = 5.0
    trie: dict = field(default_factory=dict)

    @classmethod
    def from_texts(cls, texts: Iterable[str], alphabet: list[str]) -> WordModel:
        """Words (and word pairs) of `texts`, keeping only words spelled in the model's `alphabet`."""
        letters = set(alphabet) - {BLANK, " "}
        counts, pairs = Counter(), Counter()
        for text in texts:
            words = [w for w in normalize(text).split() if set(w) <= letters]
            counts.update(words)
            pairs.update(zip([START, *words], words, strict=False))
        model = cls(counts, pairs)
        for word in counts:
            node = model.trie
            for ch in word:
                node = node.setdefault(ch, {})
            node[END] = True
        return model

    def __post_init__(self) -> None:
        self.total = sum(self.counts.values())
        self.before = Counter()  # how often each word (or START) has a successor
        for (first, _), n in self.pairs.items():
            self.before[first] += n

    def logp(self, previous: str, word: str) -> float:
        prior = self.counts[word] / self.total
        seen = self.pairs[previous, word]
        return math.log((seen + self.smoothing * prior) / (self.before[previous] + self.smoothing))


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a if b == -math.inf else a + math.log1p(math.exp(b - a))


@dataclass
class _Prefix:
    """A beam entry: a transcript so far, its CTC log-probabilities ending in a blank or in its last
    character, the language model's score of its finished words, and where its last word is in the trie."""

    blank: float
    char: float
    lm: float
    node: dict
    last: int  # the last character's index (0: none yet)

    @property
    def acoustic(self) -> float:
        return _logaddexp(self.blank, self.char)


def _merger(grown: dict[str, _Prefix]):
    """`add(text, blank, char, lm, node, last)`: put a prefix into `grown`, summing the probabilities
    of the paths that reach the same text."""

    def add(text: str, blank: float, char: float, lm: float, node: dict, last: int) -> None:
        if text in grown:
            old = grown[text]
            old.blank, old.char = _logaddexp(old.blank, blank), _logaddexp(old.char, char)
        else:
            grown[text] = _Prefix(blank, char, lm, node, last)

    return add


def lexicon_decode(log_probs: torch.Tensor, alphabet: list[str], words: WordModel, beam: int = 128,
                   lm_weight: float = 0.8, word_bonus: float = 2.5, per_frame: int = 10) -> str:
    """The best transcript of one clip's (frames, characters) log-probabilities that spells only
    words of `words`: a CTC prefix beam search (the `per_frame` likeliest characters per frame),
    adding `lm_weight` × the word's bigram log-probability + `word_bonus` as each word ends."""
    space = alphabet.index(" ")

    def word_score(text: str) -> float:
        done = text.split()
        return lm_weight * words.logp(done[-2] if len(done) > 1 else START, done[-1]) + word_bonus

    beams = {"": _Prefix(0.0, -math.inf, 0.0, words.trie, 0)}
    for frame in log_probs.tolist():
        likely = sorted(range(len(frame)), key=frame.__getitem__, reverse=True)[:per_frame]
        grown: dict[str, _Prefix] = {}
        add = _merger(grown)
        for text, p in beams.items():
            for c in likely:
                if c == 0:
                    add(text, p.acoustic + frame[0], -math.inf, p.lm, p.node, p.last)
                    continue
                extend = p.acoustic + frame[c]
                if c == p.last:  # the same character again: a repeat, unless a blank came between
                    add(text, -math.inf, p.char + frame[c], p.lm, p.node, p.last)
                    extend = p.blank + frame[c]
                if c == space:
                    if text and not text.endswith(" ") and END in p.node:
                        add(text + " ", -math.inf, extend, p.lm + word_score(text), words.trie, c)
                elif alphabet[c] in p.node:
                    add(text + alphabet[c], -math.inf, extend, p.lm, p.node[alphabet[c]], c)
        beams = dict(sorted(grown.items(), key=lambda kv: kv[1].acoustic + kv[1].lm, reverse=True)[:beam])
    finished = {text: p.acoustic + p.lm + (word_score(text) if text and not text.endswith(" ") else 0.0)
                for text, p in beams.items() if text.endswith(" ") or END in p.node or not text}
    return max(finished, key=finished.__getitem__).strip() if finished else ""


@torch.no_grad()
def transcribe(model: torch.nn.Module, waves: list[torch.Tensor], inputs: AudioInputs, dtype: str = "fp32",
               batch_size: int = 32, words: WordModel | None = None, **lexicon: float) -> list[str]:
    """A transcript per waveform, in input order (greedy, or with `words` lexicon decoding with the
    `lexicon_decode` settings given); the model's train/eval mode is kept."""
    training = model.training
    model.eval()
    device = next(model.parameters()).device
    alphabet = model.head_config.labels
    out = [""] * len(waves)
    for rows in batches(waves, inputs, batch_size):
        x, mask = inputs.batch([waves[i] for i in rows], device)
        with autocast(dtype, device):
            scores = model(x, mask).float().cpu()
        for row, i in enumerate(rows):
            length = int(mask[row].sum())
            if words is None:
                out[i] = greedy_decode(scores[row], length, alphabet)
            else:
                out[i] = lexicon_decode(scores[row, :length].log_softmax(-1), alphabet, words, **lexicon)
    model.train(training)
    return out
