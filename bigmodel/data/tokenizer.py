"""Tokenizers, all as Hugging Face `tokenizers` objects saved to one `tokenizer.json`.

Byte-level BPE encodes any text (Chinese included) without unknown tokens; the character
tokenizer is a word-level model over single characters, so both load, encode and decode
through the same code everywhere else in bigmodel.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from bigmodel.errors import BigModelError

EOT = "<|endoftext|>"
PAD = "<|pad|>"
MASK = "<|mask|>"
UNK = "<|unk|>"
SPECIAL_TOKENS = [EOT, PAD, MASK]


def train_bpe(texts: Iterable[str], vocab_size: int, length: int | None = None) -> Tokenizer:
    """Byte-level BPE (GPT-2 style pre-splitting) trained on `texts`."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise BigModelError(f"--vocab-size must be at least {256 + len(SPECIAL_TOKENS)} for byte-level BPE")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return tok


def train_char(texts: Iterable[str]) -> Tokenizer:
    """One token per distinct character seen, plus the special tokens and `<|unk|>`."""
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    vocab = {ch: i for i, ch in enumerate(sorted(chars))}
    for special in [*SPECIAL_TOKENS, UNK]:
        vocab[special] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([*SPECIAL_TOKENS, UNK])
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise BigModelError(f"{path}: no tokenizer.json there")
    return tokenizer_from_json(p.read_text(encoding="utf-8"), p)


def tokenizer_from_json(text: str, where: Path) -> Tokenizer:
    """A plain tokenizer from the contents of a tokenizer.json (found at `where`)."""
    try:
        return plain_tokenizer(Tokenizer.from_str(text))
    except Exception as e:  # tokenizers raises plain Exception subclasses for bad JSON
        raise BigModelError(f"{where}: not a Hugging Face tokenizer.json ({str(e).splitlines()[0]})") from None


def plain_tokenizer(tok: Tokenizer) -> Tokenizer:
    """A copy of `tok` that neither pads nor truncates: the only kind bigmodel stores or hands out.

    Hugging Face folders often ship `tokenizer.json` with padding and truncation switched on;
    kept, they would silently cut every text `generate` or `evaluate` reads to that length."""
    copy = Tokenizer.from_str(tok.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def special_id(tok: Tokenizer, token: str) -> int | None:
    return tok.token_to_id(token)


def stop_ids(tok: Tokenizer, tokenizer_config: dict | None = None) -> frozenset[int]:
    """The ids that end a continuation: bigmodel's end-of-text and the model's own end-of-sequence
    token (`eos_token` of its `tokenizer_config.json`: `<|im_end|>` for a ChatML model, which ends a turn)."""
    eos = (tokenizer_config or {}).get("eos_token")
    if isinstance(eos, dict):  # Hugging Face also writes special tokens as serialised AddedTokens
        eos = eos.get("content")
    ids = (tok.token_to_id(t) for t in (EOT, eos) if isinstance(t, str))
    return frozenset(i for i in ids if i is not None)


def unknown_id(tok: Tokenizer) -> int | None:
    """The id that stands for characters the vocabulary lacks (None for byte-level BPE)."""
    return tok.token_to_id(UNK)


class StreamDecoder:
    """Turns ids into text as they arrive, holding back bytes of an unfinished UTF-8 character.

    Byte-level BPE can split one Chinese character or emoji across tokens; decoding such a
    prefix yields U+FFFD, so pending ids wait until they decode cleanly.
    """

    def __init__(self, tok: Tokenizer, max_pending: int = 8) -> None:
        self.tok = tok
        self.pending: list[int] = []
        self.max_pending = max_pending  # a genuinely invalid sequence is flushed after this many

    def push(self, token_id: int) -> str:
        self.pending.append(token_id)
        text = self.tok.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < self.max_pending:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text = self.tok.decode(self.pending) if self.pending else ""
        self.pending = []
        return text


class StopText:
    """Streams text that must end before the first of some stop strings, never sending a piece of one.

    A stop string can arrive over several tokens; the text that could still be the start of one is
    held back until the next pieces show whether it is."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""
        self.sent = 0  # characters of `text` already handed out

    def push(self, piece: str) -> tuple[str, bool]:
        """The text that is now safe to send, and whether a stop string was met (then nothing follows)."""
        self.text += piece
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if hits:
            return self._send(min(hits)), True
        return self._send(len(self.text) - self._held()), False

    def flush(self) -> str:
        """At the end: whatever was held back, since no stop string can complete any more."""
        return self._send(len(self.text))

    def _held(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        return max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)

    def _send(self, end: int) -> str:
        out, self.sent = self.text[self.sent:max(end, self.sent)], max(end, self.sent)
        return out


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of `size` items (the last may be shorter), taken as they come."""
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
