"""Structured output: a grammar masks every token that could not continue a valid answer, so what comes
out parses, whatever the model was trained on.

xgrammar does the work: it compiles JSON schemas, regular expressions and EBNF against the vocabulary
once (cached by schema), deciding most tokens at compile time, so the per-step mask is cheap on a CPU: on
SmolLM2 decoding keeps 97% of its tokens/s with a JSON schema (`bench/structured_output.py`). It
ships CPU wheels and is the default of vLLM and SGLang; llguidance and outlines do the same job and
were not measured beside it. A request asks with OpenAI's `response_format` (`json_object`, or
`json_schema` with a schema), or with this server's `regex` or `choice` fields. JSON comes without
free whitespace between tokens, so an untrained model cannot wander off in blank lines.
"""

from __future__ import annotations

import functools
import json
import re
import threading

import torch
from tokenizers import Tokenizer

from bigmodel.errors import BigModelError


def vocab_type(tok: Tokenizer) -> int:
    """xgrammar's name for how token strings map to bytes: GPT-2's byte alphabet, byte-fallback pieces,
    or the text itself (character and word vocabularies)."""
    import xgrammar as xgr

    spec = json.loads(tok.to_str())
    decoders = json.dumps(spec.get("decoder") or {})
    if '"ByteLevel"' in decoders:
        return xgr.VocabType.BYTE_LEVEL
    if '"ByteFallback"' in decoders:
        return xgr.VocabType.BYTE_FALLBACK
    return xgr.VocabType.RAW


class Grammars:
    """The vocabulary as xgrammar sees it and its compiler (per model; compiled grammars are cached)."""

    def __init__(self, tok: Tokenizer, vocab_size: int, stop_ids: frozenset[int]) -> None:
        try:
            import xgrammar as xgr
        except ImportError:
            raise BigModelError("structured output needs xgrammar: pip install 'bigmodel[serve]'") from None
        vocab = [tok.id_to_token(i) or "" for i in range(min(tok.get_vocab_size(), vocab_size))]
        info = xgr.TokenizerInfo(vocab, vocab_type(tok), vocab_size=vocab_size, stop_token_ids=sorted(stop_ids))
        self.compiler = xgr.GrammarCompiler(info, max_threads=1)
        self.lock = threading.Lock()  # requests compile on worker threads, off the event loop: one at a time
        self.cached = functools.lru_cache(maxsize=256)(self._compile)

    def compile(self, kind: str, spec: object) -> object:
        """A compiled grammar for `kind` (json_object, json_schema, regex, choice); ValueError if it is invalid.
        The same schema again reuses the first compile (keys keep their order: it is the order of the output)."""
        return self.cached(kind, json.dumps(spec))

    def _compile(self, kind: str, text: str) -> object:
        with self.lock:
            return self._compile_now(kind, json.loads(text))

    def _compile_now(self, kind: str, spec: object) -> object:
        if kind == "json_object":
            return self.compiler.compile_builtin_json_grammar()
        if kind == "json_schema":
            return self.compiler.compile_json_schema(json.dumps(spec), any_whitespace=False)
        if kind == "regex":
            return self.compiler.compile_regex(spec)
        return self.compiler.compile_regex("|".join(re.escape(c) for c in spec))  # choice


class DeadEnd(ValueError):
    """The grammar asks for text the vocabulary cannot spell: the request's fault, not the server's."""


class Matcher:
    """One sequence's place in its grammar: masks its logits, follows its tokens."""

    def __init__(self, grammar: object, vocab_size: int) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        self.matcher = xgr.GrammarMatcher(grammar)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def allows_any(self) -> bool:
        """Whether some token of the vocabulary may come next (a pattern may need characters it lacks)."""
        self.matcher.fill_next_token_bitmask(self.bitmask)
        return bool(self.bitmask.any())

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (V,) with every token the grammar forbids at -inf; DeadEnd if it forbids them all."""
        if not self.allows_any():
            raise DeadEnd("the grammar allows no token of this model's vocabulary here")
        logits = logits.float().clone()
        self.xgr.apply_token_bitmask_inplace(logits[None], self.bitmask)
        return logits

    def accept(self, token: int) -> bool:
        """Follow `token`; True once the grammar is complete (only an end token may follow)."""
        self.matcher.accept_token(token)
        return self.matcher.is_terminated()
