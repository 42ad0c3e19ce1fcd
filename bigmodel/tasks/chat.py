"""`chat` and `dpo`: a decoder taught conversations through the chat template it will be served with.

`chat` (supervised fine-tuning): each conversation is rendered as `chat` and `serve` will render it,
and the loss falls on the assistant's tokens alone, its end-of-turn token included: the model learns to
answer and to stop, not to predict its users. `--packing` puts several conversations in one row, each
attending only to itself, so short conversations waste no padding.

`dpo` (Rafailov et al., 2023): per prompt a chosen and a rejected answer, and the loss
-log σ(β·[(log π(chosen) - log π_ref(chosen)) - (log π(rejected) - log π_ref(rejected))]), which raises
the chosen answer's likelihood relative to the rejected one's, measured against the frozen starting model.
DPO alone may lower both, the chosen one less; `--rpo-alpha` adds the chosen answer's own loss per token
(Pang et al., 2024), so the preferred answer is also learned.
With LoRA that reference is the same weights with the adapters switched off, so no second copy is held;
its log-probabilities are computed once per example and kept.

Rows are OpenAI/TRL JSONL: `{"messages": [...]}` or `{"prompt", "completion"}` for `chat`;
`{"prompt" or "messages", "chosen", "rejected"}` for `dpo`, each answer a string or a list of messages.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch.nn.parallel import DistributedDataParallel as DDP

from bigmodel.config import FinetuneConfig
from bigmodel.data.collate import collate
from bigmodel.data.labelled import read_rows
from bigmodel.data.tokenizer import EOT
from bigmodel.device import autocast
from bigmodel.errors import BigModelError
from bigmodel.infer.chat import Messages, Render, training_template
from bigmodel.model.transformer import Transformer
from bigmodel.tasks.base import Task, evaluating, teacher_forced_figures

Row = tuple[tuple[int, ...], tuple[int, ...]]  # token ids, and per token its id where it carries loss, else -1
EVAL_BATCH = 16


@dataclass
class Conversation:
    messages: Messages  # for dpo: the prompt's messages, without the answers
    line: int
    task: str  # the row's own `task` field, if any: evaluation reports each apart
    chosen: str = ""  # dpo
    rejected: str = ""


def _messages(value: Any, where: str) -> Messages:
    """A prompt or answer as messages: a string is one user turn."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        raise BigModelError(f"{where}: messages must be a list of {{\"role\": ..., \"content\": ...}} strings")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _answer(value: Any, where: str) -> str:
    """A completion as text: a string, or the content of the assistant messages of a list."""
    if isinstance(value, str):
        return value
    return "".join(m["content"] for m in _messages(value, where) if m["role"] == "assistant")


def read_conversations(path: str, preference: bool) -> list[Conversation]:
    """Every row of a chat or preference file; bad rows stop the run with their file and line."""
    conversations = []
    for line, row in read_rows(path):
        where = f"{path}: line {line}"
        if not isinstance(row, dict):
            raise BigModelError(f"{where}: not a JSON object")
        prompt = row.get("messages", row.get("prompt"))
        if prompt is None:
            raise BigModelError(f"{where}: needs \"messages\" or \"prompt\"")
        messages = _messages(prompt, where)
        if preference:
            if "chosen" not in row or "rejected" not in row:
                raise BigModelError(f"{where}: a preference row needs \"chosen\" and \"rejected\"")
            chosen, rejected = _answer(row["chosen"], where), _answer(row["rejected"], where)
            if not chosen.strip() or not rejected.strip():
                raise BigModelError(f"{where}: chosen and rejected must both hold an answer")
            if chosen.strip() == rejected.strip():
                raise BigModelError(f"{where}: chosen equals rejected, which teaches nothing")
            conversations.append(Conversation(messages, line, str(row.get("task", "")), chosen, rejected))
            continue
        if "completion" in row:
            messages.append({"role": "assistant", "content": _answer(row["completion"], where)})
        if not any(m["role"] == "assistant" and m["content"] for m in messages):
            raise BigModelError(f"{where}: no assistant turn (to learn from, or to score)")
        conversations.append(Conversation(messages, line, str(row.get("task", ""))))
    return conversations


def assistant_spans(render: Render, messages: Messages, only_last: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns (each through its
    end-of-turn token): a turn is what rendering it adds after the prompt that asks for it."""
    text = render(messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or (only_last and i != len(messages) - 1):
            continue
        before = render(messages[:i], add_generation_prompt=True)
        through = render(messages[:i + 1], add_generation_prompt=False)
        if not (through.startswith(before) and text.startswith(through)):
            raise BigModelError(f"the chat template does not render turn {i + 1} as an extension of the turns "
                                "before it, so its tokens cannot be found; give another with --chat-template")
        spans.append((len(before), len(through.rstrip())))
    return text, spans


def encode_conversation(tok: Tokenizer, render: Render, messages: Messages, max_length: int,
                        only_last: bool = False) -> Row:
    """Token ids of the rendered conversation (cut to `max_length`) and the ids that carry loss."""
    text, spans = assistant_spans(render, messages, only_last)
    encoding = tok.encode(text, add_special_tokens=False)
    labels = [i if any(start <= a < end for start, end in spans) else -1
              for i, (a, _) in zip(encoding.ids, encoding.offsets, strict=True)]
    return tuple(encoding.ids[:max_length]), tuple(labels[:max_length])


def batch(rows: list[Row], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Teacher forcing over right-padded rows: each token predicts the next, loss where that one carries it."""
    idx, mask = collate([list(ids[:-1]) for ids, _ in rows], pad, device)
    targets = collate([list(labels[1:]) for _, labels in rows], -1, device)[0]
    return {"idx": idx, "padding_mask": mask, "targets": targets}


def packed_batch(groups: list[list[Row]], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Several rows per sequence: `segments` numbers each row's tokens (0 is padding), so attention and
    positions stay inside each."""
    joined = [(tuple(i for ids, _ in g for i in ids[:-1]), tuple(t for _, labels in g for t in labels[1:]),
               tuple(n + 1 for n, (ids, _) in enumerate(g) for _ in ids[:-1])) for g in groups]
    idx, mask = collate([list(ids) for ids, _, _ in joined], pad, device)
    targets = collate([list(t) for _, t, _ in joined], -1, device)[0]
    segments = collate([list(s) for _, _, s in joined], 0, device)[0]
    return {"idx": idx, "padding_mask": mask, "targets": targets, "segments": segments}


def units_of(rows: list[Row]) -> int:
    return sum(sum(t != -1 for t in labels[1:]) for _, labels in rows)


class ChatTask(Task):
    """Supervised fine-tuning on conversations; loss and next-token accuracy on assistant tokens."""

    figures = ["token_accuracy"]

    def __init__(self, cfg: FinetuneConfig, backbone: Transformer, tok: Tokenizer, special: dict) -> None:
        if not backbone.config.causal or backbone.config.encoder_layers:
            raise BigModelError(f"--task {cfg.task} needs a decoder-only language model")
        super().__init__(cfg, backbone, tok)
        self.render, self.tokenizer_config = training_template(special, cfg.init, cfg.chat_template, EOT)
        self.preference = cfg.task == "dpo"
        if self.preference and cfg.packing:
            raise BigModelError("--packing is for --task chat; dpo compares whole answers row by row")
        self.train = self.encode(read_conversations(cfg.train, self.preference)[:cfg.max_train or None], cfg.train)
        self.examples = len(self.train)
        self.val_items = self.encode(read_conversations(cfg.val, self.preference), cfg.val)

    def encode(self, conversations: list[Conversation], path: str) -> list[Any]:
        """Encoded rows; a row whose answer starts beyond `--max-length` teaches nothing and is left out."""
        items, cut = [], 0
        for c in conversations:
            try:
                item = self.encode_one(c)
            except BigModelError as e:
                raise BigModelError(f"{path}: line {c.line}: {e}") from None
            rows = item if self.preference else (item,)
            if all(any(t != -1 for t in labels[1:]) for _, labels in rows):
                items.append(item)
            else:
                cut += 1
        if not items:
            raise BigModelError(f"{path}: no row has an answer within --max-length {self.max_length}")
        if cut:
            print(f"note: {path}: {cut} of {len(conversations)} rows left out, their answer beyond "
                  f"--max-length {self.max_length}")
        return items

    def encode_one(self, c: Conversation) -> Row:
        return encode_conversation(self.tok, self.render, c.messages, self.max_length)

    def train_items(self, rng: random.Random) -> list[Any]:
        return self.train  # rendered and encoded once, when read: bad rows stop the run before it trains

    def length(self, item: Row) -> int:
        return len(item[0])

    def units(self, items: list[Row]) -> int:
        return units_of(items)

    def loss(self, model: torch.nn.Module, items: list[Row], device: torch.device) -> torch.Tensor:
        packing = self.cfg.packing
        inputs = packed_batch(self.pack(items), self.pad, device) if packing else batch(items, self.pad, device)
        with autocast(self.cfg.dtype, device):
            _, loss = model(**inputs, logits_at=inputs["targets"] != -1)
        return loss * self.units(items)

    def pack(self, items: list[Row]) -> list[list[Row]]:
        """First fit, longest first, into sequences of at most `max_length` + 1 tokens."""
        groups: list[list[Row]] = []
        room: list[int] = []
        for item in sorted(items, key=self.length, reverse=True):
            need = len(item[0]) - 1
            fit = next((g for g, r in enumerate(room) if r >= need), None)
            if fit is None:
                groups.append([item])
                room.append(self.max_length - need)
            else:
                groups[fit].append(item)
                room[fit] -= need
        return groups

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        order = sorted(self.val_items, key=self.length)
        return teacher_forced_figures(model, (batch(order[start:start + EVAL_BATCH], self.pad, device)
                                              for start in range(0, len(order), EVAL_BATCH)), self.cfg.dtype)


def sequence_logps(model: torch.nn.Module, rows: list[Row], pad: int, device: torch.device, dtype: str
                   ) -> torch.Tensor:
    """Summed log-probability of each row's loss-carrying tokens."""
    inputs = batch(rows, pad, device)
    targets = inputs.pop("targets")
    scored = targets != -1
    with autocast(dtype, device):
        logits, _ = model(**inputs, logits_at=scored)
    nll = F.cross_entropy(logits.float(), targets[scored], reduction="none")
    return -torch.zeros(len(rows), device=device).index_add(0, scored.nonzero()[:, 0], nll)


class DPOTask(ChatTask):
    """Direct preference optimisation against the starting model; per pair, its loss and implicit rewards."""

    figures = ["reward_margin", "preference_accuracy", "chosen_reward", "rejected_reward"]

    def __init__(self, cfg: FinetuneConfig, backbone: Transformer, tok: Tokenizer, special: dict) -> None:
        super().__init__(cfg, backbone, tok, special)
        # LoRA's reference is the base with its adapters off; other methods need a frozen copy
        self.reference = None if cfg.method == "lora" else copy.deepcopy(backbone).eval().requires_grad_(False)
        self.reference_logps: dict[tuple[Row, Row], tuple[float, float]] = {}

    def encode_one(self, c: Conversation) -> tuple[Row, Row]:
        def answer(text: str) -> Row:
            return encode_conversation(self.tok, self.render, [*c.messages, {"role": "assistant", "content": text}],
                                       self.max_length, only_last=True)

        return answer(c.chosen), answer(c.rejected)

    def length(self, item: tuple[Row, Row]) -> int:
        return max(len(item[0][0]), len(item[1][0]))

    def units(self, items: list[tuple[Row, Row]]) -> int:
        return len(items)

    def references(self, model: torch.nn.Module, items: list[tuple[Row, Row]], device: torch.device
                   ) -> torch.Tensor:
        """(pairs, 2) log-probabilities of chosen and rejected under the reference, computed once each."""
        todo = [item for item in items if item not in self.reference_logps]
        if todo:
            rows = [row for item in todo for row in item]
            runner = model.module if isinstance(model, DDP) else model
            with evaluating(runner):
                if self.reference is None:
                    with runner.disable_adapter():
                        logps = sequence_logps(runner, rows, self.pad, device, self.cfg.dtype)
                else:
                    logps = sequence_logps(self.reference, rows, self.pad, device, self.cfg.dtype)
            for item, pair in zip(todo, logps.view(-1, 2).tolist(), strict=True):
                self.reference_logps[item] = (pair[0], pair[1])
        return torch.tensor([self.reference_logps[item] for item in items], device=device)

    def rewards(self, model: torch.nn.Module, items: list[tuple[Row, Row]], device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pairs, 2) implicit rewards β·(log π - log π_ref) of chosen and rejected, and log π itself."""
        reference = self.references(model, items, device)
        policy = sequence_logps(model, [row for item in items for row in item], self.pad, device,
                                self.cfg.dtype).view(-1, 2)
        return self.cfg.beta * (policy - reference), policy

    def loss(self, model: torch.nn.Module, items: list[tuple[Row, Row]], device: torch.device) -> torch.Tensor:
        rewards, policy = self.rewards(model, items, device)
        loss = -F.logsigmoid(rewards[:, 0] - rewards[:, 1])
        if self.cfg.rpo_alpha:  # plus the chosen answer's own loss per token, so it is learned, not just preferred
            tokens = torch.tensor([units_of([chosen]) for chosen, _ in items], device=device)
            loss = loss - self.cfg.rpo_alpha * policy[:, 0] / tokens
        return loss.sum()

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        found = []
        with evaluating(model):
            for start in range(0, len(self.val_items), EVAL_BATCH):
                found.append(self.rewards(model, self.val_items[start:start + EVAL_BATCH], device)[0])
        rewards = torch.cat(found)
        margin = rewards[:, 0] - rewards[:, 1]
        return {"val_loss": float(-F.logsigmoid(margin).mean()), "reward_margin": float(margin.mean()),
                "preference_accuracy": float((margin > 0).float().mean()),
                "chosen_reward": float(rewards[:, 0].mean()), "rejected_reward": float(rewards[:, 1].mean())}
