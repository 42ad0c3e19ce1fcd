"""`asr`: Whisper fine-tuned on a speech table (audio path and transcript: `dataset speech`'s CSVs, or a
manifest with path, text and language). Each clip is read as Whisper was trained to read it (its first
30 s, silence after), and its transcript is teacher-forced after Whisper's prompt (start of transcript,
language and task, no timestamps); the loss falls on the transcript's tokens and the end. Each evaluation
transcribes the validation clips greedily and scores them as `evaluate --task asr` does."""

from __future__ import annotations

import random

import torch
from tokenizers import Tokenizer

from bigmodel.config import FinetuneConfig
from bigmodel.data.media import speech_rows
from bigmodel.device import autocast
from bigmodel.errors import BigModelError
from bigmodel.evaluate.asr import asr_figures
from bigmodel.infer.whisper import N_FRAMES, WhisperVocab, padded_mel, prompt, read_speech, transcribe, whisper_rules
from bigmodel.model.checkpoint import locate
from bigmodel.model.transformer import Transformer
from bigmodel.tasks.base import Task, evaluating, teacher_forced_figures

Item = tuple[torch.Tensor, list[int], int]  # features (n_mels, 3000), prompt and transcript ids, prompt length


class ASRTask(Task):
    """Speech to text with Whisper's own decoder: the best checkpoint is the one with the lowest WER."""

    metric, minimize = "wer", True
    figures = ["wer", "cer", "token_accuracy"]

    def __init__(self, cfg: FinetuneConfig, backbone: Transformer, tok: Tokenizer) -> None:
        if backbone.config.source != "mel":
            raise BigModelError("--task asr fine-tunes Whisper: --init whisper-tiny.en, whisper-base or a Whisper "
                                "checkpoint")
        super().__init__(cfg, backbone, tok)
        self.vocab = WhisperVocab.of(tok, whisper_rules(locate(cfg.init)[0]), backbone.config.vocab_size)
        self.train = self._read(cfg.train, cfg.max_train)
        self.examples = len(self.train)
        self.val_waves: list = []  # transcribed at each evaluation
        self.val = self._read(cfg.val, 0, self.val_waves)

    def _read(self, path: str, limit: int, waves: list | None = None) -> list[tuple[Item, str, str]]:
        """(item, transcript, language) per row (and each waveform into `waves`); a transcript too long for
        the decoder is named."""
        rows = speech_rows(path, self.cfg.source_column, self.cfg.target_column)[:limit or None]
        block = self.model.config.block_size
        read = []
        for row in rows:
            language = row["language"] or ("en" if self.vocab.languages else None)
            start = prompt(self.vocab, language, "transcribe")
            ids = start + self.tok.encode(" " + row["text"], add_special_tokens=False).ids
            if len(ids) + 1 > block:
                raise BigModelError(f"{path}: {row['audio']}'s transcript is {len(ids)} tokens with the prompt; "
                                    f"Whisper's decoder holds {block}")
            wave = read_speech(row["audio"])
            if waves is not None:
                waves.append(wave)
            mel = padded_mel(wave, self.model.config.n_mels)[:, :N_FRAMES]
            read.append(((mel, ids, len(start)), row["text"], language or ""))
        return read

    def train_items(self, rng: random.Random) -> list[Item]:
        return [item for item, _, _ in self.train]

    def length(self, item: Item) -> int:
        return len(item[1])

    def units(self, items: list[Item]) -> int:
        return sum(len(ids) - start + 1 for _, ids, start in items)

    def _batch(self, items: list[Item], device: torch.device) -> dict[str, torch.Tensor]:
        width = max(len(ids) for _, ids, _ in items)
        eot = self.vocab.eot
        idx = torch.tensor([ids + [eot] * (width - len(ids)) for _, ids, _ in items], device=device)
        targets = torch.tensor([[-1] * (start - 1) + ids[start:] + [eot] + [-1] * (width - len(ids))
                                for _, ids, start in items], device=device)
        source = torch.stack([mel for mel, _, _ in items]).to(device)
        return {"idx": idx, "targets": targets, "source": source}

    def loss(self, model: torch.nn.Module, items: list[Item], device: torch.device) -> torch.Tensor:
        with autocast(self.cfg.dtype, device):
            _, loss = model(**self._batch(items, device), label_smoothing=self.cfg.label_smoothing)
        return loss * self.units(items)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """WER and CER of greedy transcripts (Whisper's normaliser), teacher-forced loss and token accuracy."""
        device = next(model.parameters()).device
        items = [item for item, _, _ in self.val]
        figures = teacher_forced_figures(model, (self._batch(items[start:start + 16], device)
                                                 for start in range(0, len(items), 16)), self.cfg.dtype)
        whisper = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA: adapters inside
        heard = [""] * len(self.val)
        with evaluating(model), autocast(self.cfg.dtype, device):
            for language in dict.fromkeys(lang for _, _, lang in self.val):
                rows = [i for i, (_, _, lang) in enumerate(self.val) if lang == language]
                found = transcribe(whisper, self.tok, self.vocab, [self.val_waves[i] for i in rows], language or None,
                                   timestamps=False, temperatures=(0.0,), batch_size=16)
                for i, result in zip(rows, found, strict=True):
                    heard[i] = result["text"]
        return {**figures, **asr_figures([text for _, text, _ in self.val], heard,
                                         [lang or "en" for _, _, lang in self.val])}
