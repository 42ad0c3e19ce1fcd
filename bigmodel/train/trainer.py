"""The pretraining loop: AdamW, warm-up + cosine, clipping, accumulation, autocast, DDP, DP-SGD.

One code path: a single process is a world of size one, bf16/fp16 is an autocast context
(`--dtype auto` picks the format this device runs fastest; fp16 adds a gradient scaler),
compile is a wrapped module. Everything a resumed run needs to continue exactly (weights,
optimizer, iteration, RNG, sampler position) goes into `last/` at every save.

With `--dp-epsilon` the batches are Poisson draws of fixed, non-overlapping blocks of the
training split, and each block's gradient is clipped before Opacus adds noise: the guarantee
covers any one block of `block_size` tokens (a document spanning k blocks gets k times the ε,
by group privacy).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from bigmodel.config import ModelConfig, TrainConfig, preset, resolve
from bigmodel.data.batches import BlockSampler, WindowSampler, load_meta, open_split
from bigmodel.data.tokenizer import load_tokenizer
from bigmodel.device import autocast
from bigmodel.errors import BigModelError
from bigmodel.model.checkpoint import (
    RESUMED,
    SHARDS,
    Storage,
    assign_weights,
    load_backbone,
    load_trainer_state,
    resolve_checkpoint,
    save_checkpoint,
)
from bigmodel.model.formats import tokenizer_files
from bigmodel.model.transformer import Transformer
from bigmodel.train import distributed, privacy, sharded
from bigmodel.train.loop import Loop
from bigmodel.train.objectives import MaskedLM, SpanCorruption, masked_accuracy
from bigmodel.train.optim import KeepBest, lr_at, make_optimizer, optimizer_step, run_precision
from bigmodel.train.track import METRIC_FIELDS, Sink, Tracker, tracking_sinks


class Trainer(Loop):
    """Pretraining in the shared loop: steps over windows of the token stream, evaluated on fixed windows
    of both splits (iteration 0 included), the best by validation loss."""

    evaluate_first = True
    step_name = "iteration"

    def __init__(self, model_cfg: ModelConfig, cfg: TrainConfig, sections: dict[str, Any],
                 sinks: list[Sink] | None = None) -> None:
        """`sinks` see every evaluation besides the ones `--track` asks for (a sweep's pruner).
        `sections` are saved as given (`dtype: auto` stays auto); the run itself uses the concrete dtype."""
        super().__init__()
        self.spent["tokens"] = 0
        self.sections = sections
        self.sinks = sinks or []
        self.dist = distributed.setup(cfg.device)
        cfg, self.scaler = run_precision(cfg, self.dist.device, model_cfg, cfg.batch_size, model_cfg.block_size,
                                         speak=self.dist.is_main)
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.storage = Storage.of(cfg)
        self.tokenizer_files: dict[str, str] = {}  # the chat template of an --init model
        meta = load_meta(cfg.data)
        self.tokenizer = load_tokenizer(cfg.data)
        start = self._initial_weights(cfg.init, model_cfg) if cfg.init and not cfg.resume else None
        if model_cfg.vocab_size < meta["vocab_size"]:
            raise BigModelError(
                f"--vocab-size {model_cfg.vocab_size} is smaller than the tokenizer's {meta['vocab_size']}"
            )
        torch.manual_seed(cfg.seed)
        self.raw_model = Transformer(model_cfg).to(self.dist.device)
        if start is not None:
            self.raw_model.load_state_dict(start)
        self.sharded = cfg.strategy == "fsdp" and self.dist.world_size > 1
        if self.sharded:
            if self.storage.key is not None:
                raise BigModelError("--strategy fsdp writes sharded checkpoints, which cannot be sealed yet "
                                    "(drop --encrypt-key-env or use --strategy ddp)")
            if cfg.dtype == "fp16":
                raise BigModelError("--dtype fp16 with --strategy fsdp is not supported (use bf16, or --strategy ddp)")
            distributed.shard(self.raw_model, self.dist, cfg.dtype)  # before the optimizer sees the parameters
        self.optimizer = make_optimizer(self.raw_model, cfg, self.dist.device)
        block, world = model_cfg.block_size, self.dist.world_size
        self.splits = {s: open_split(cfg.data, s) for s in ("train", "val")}
        self.train_batches: WindowSampler | BlockSampler = WindowSampler(
            self.splits["train"], block, cfg.batch_size, cfg.seed, self.dist.rank, world)
        self.masking: MaskedLM | SpanCorruption | None = None
        if cfg.objective == "mlm":
            if model_cfg.causal:
                raise BigModelError("--objective mlm needs a bidirectional model (--no-causal)")
            self.masking = MaskedLM(self.tokenizer, meta["vocab_size"], cfg.seed + 2)
        if (cfg.objective == "span") != (model_cfg.encoder_layers > 0):
            raise BigModelError("--objective span and an encoder-decoder (--encoder-layers N) go together")
        if cfg.objective == "span":
            self.masking = SpanCorruption(self.tokenizer, cfg.seed + 2)
        self.best = KeepBest(minimize=True)  # by val loss
        self.total_steps, self.eval_every = cfg.max_iters, cfg.eval_interval
        self.save_every = cfg.save_interval or cfg.eval_interval
        self.tokens_per_step = cfg.batch_size * cfg.grad_accum * world * block
        torch.manual_seed(cfg.seed + self.dist.rank)  # dropout differs per rank; init did not
        if cfg.resume:
            self._restore()
        model: torch.nn.Module = self.raw_model
        self.private: privacy.Privacy | None = None
        if cfg.dp_epsilon is not None:
            model = self._make_private(model_cfg)
        if world > 1 and not self.sharded:
            model = DDP(model, device_ids=[self.dist.device.index] if self.dist.device.type == "cuda" else None)
        self.model = torch.compile(model) if cfg.compile else model

    def _make_private(self, model_cfg: ModelConfig) -> torch.nn.Module:
        """Opacus' view of the model; batches become Poisson draws of blocks."""
        cfg, blocks = self.cfg, BlockSampler.count(self.splits["train"], model_cfg.block_size)
        privacy.check(cfg, blocks, cfg.batch_size, {
            "--objective span yet": cfg.objective == "span",
            "tied embeddings (pass --no-tie-embeddings)": model_cfg.tie_embeddings,
            "--grad-accum above 1 yet": cfg.grad_accum > 1, "--resume yet": cfg.resume,
            "--compile": cfg.compile, "several processes (torchrun) yet": self.dist.world_size > 1,
            "--dtype fp16 (its loss scaling) yet": cfg.dtype == "fp16"})
        model, self.optimizer, drawn, self.private = privacy.make_private(
            self.raw_model, self.optimizer, blocks, cfg.batch_size, cfg.max_iters, cfg)
        self.train_batches = BlockSampler(self.splits["train"], model_cfg.block_size, drawn)
        return model

    def _initial_weights(self, init: str, model_cfg: ModelConfig) -> dict[str, torch.Tensor]:
        """The weights of `--init`, whose tokenizer must be the one the corpus was prepared with."""
        model, tok, folder = load_backbone(init, torch.device("cpu"), self.storage)
        self.tokenizer_files = tokenizer_files(folder)  # its chat template goes along
        if tok is None or tok.get_vocab(True) != self.tokenizer.get_vocab(True):
            raise BigModelError(f"--data {self.cfg.data} was prepared with another tokenizer than --init {init}'s; "
                                f"prepare it with `bigmodel prepare --tokenizer` and {folder}'s tokenizer.json")
        state = model.state_dict()
        if "pos_emb.weight" in state:  # learned positions: a shorter --block-size keeps the first rows
            state["pos_emb.weight"] = state["pos_emb.weight"][:model_cfg.block_size]
        return state

    # --- state -------------------------------------------------------------------------

    def _restore(self) -> None:
        folder = resolve_checkpoint(self.out, prefer="last")
        self.tokenizer_files = tokenizer_files(folder)
        state = load_trainer_state(folder, self.storage)
        if (folder / SHARDS).is_dir():  # FSDP's: resharded onto however many processes run now
            sharded.load(self.raw_model, self.optimizer, folder / SHARDS)
        elif self.sharded:
            raise BigModelError(f"{folder}: saved by --strategy ddp; resume it with --strategy ddp")
        else:
            assign_weights(self.raw_model, self.storage.tensors(folder)[0], folder, RESUMED)
            self.optimizer.load_state_dict(state["optimizer"])
        self.restore_state(state)
        self.train_batches.restore(state["sampler"])
        if self.masking is not None:
            self.masking.generator.set_state(state["masking"])

    def state(self, step: int) -> dict[str, Any]:
        state = super().state(step)
        if not self.sharded:  # FSDP's optimizer state is in the shards
            state["optimizer"] = self.optimizer.state_dict()
        if not self.private:  # a private run cannot resume (yet): its Poisson draws have no saved state
            state["sampler"] = self.train_batches.state()
        if self.masking is not None:
            state["masking"] = self.masking.generator.get_state()
        return state

    def save(self, name: str, step: int, figures: dict[str, float]) -> None:
        """`best/` or `last/` (with what resumes); every rank joins the gathers, rank 0 writes the folder.
        Under FSDP the weights are gathered into a plain checkpoint, and `last/` also holds the shards
        of weights and optimizer state (`torch.distributed.checkpoint`), written by every rank."""
        state = self.state(step)
        sections = {**self.sections, "compute": self.compute(step)}
        if self.private:
            sections["privacy"] = self.private.record()
        model, shards = self.raw_model, None
        if self.sharded:
            model = sharded.gathered(self.raw_model, self.dist.is_main)
            if name == "last":
                shards = sharded.save(self.raw_model, self.optimizer, self.out / f"{name}.{SHARDS}.tmp")
        if self.dist.is_main:
            save_checkpoint(self.out / name, model, self.tokenizer, sections, state, self.storage, shards,
                            plain=self.tokenizer_files)

    # --- loop --------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss on `eval_iters` fixed batches per split (the same windows every time)."""
        self.model.eval()
        losses = {}
        for split, tokens in self.splits.items():
            sampler = WindowSampler(tokens, self.raw_model.config.block_size, self.cfg.batch_size,
                                    seed=self.cfg.seed + 1, rank=self.dist.rank, world_size=self.dist.world_size)
            masking = torch.Generator().manual_seed(self.cfg.seed + 3)
            total, correct, counted = 0.0, 0, 0
            for _ in range(self.cfg.eval_iters):
                x, y = self._inputs(sampler, masking)
                with autocast(self.cfg.dtype, self.dist.device):
                    logits, loss = self.model(**x, targets=y)
                total += loss.item()
                if self.cfg.objective == "mlm":
                    hits, n = masked_accuracy(logits, y)
                    correct, counted = correct + hits, counted + n
            losses[split] = self.dist.mean(total / self.cfg.eval_iters)
            if self.cfg.objective == "mlm":
                losses[f"{split}_mask_acc"] = self.dist.mean(correct / max(counted, 1))
        self.model.train()
        return losses

    def _inputs(self, sampler: WindowSampler, masking: torch.Generator | None = None
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The model's next inputs (keyword arguments) and targets: shifted windows for causal LM,
        masked ones for MLM, a corrupted source and its spans for span corruption."""
        x, y = sampler.next()
        inputs = {"idx": x}
        if self.masking is not None:
            inputs, y = self.masking(x, masking)
        device = self.dist.device
        return {k: v.to(device) for k, v in inputs.items()}, y.to(device)  # unpinned: an async copy gains nothing

    def train_step(self, step: int) -> tuple[float, int, int]:
        """One optimizer step over `grad_accum` micro-batches: (mean loss, 1, tokens), or no units for an
        empty DP batch."""
        self.spent["tokens"] += self.tokens_per_step  # every process's: the model card's compute figures
        if self.private:
            return self._private_step(step)
        total = 0.0
        for micro in range(self.cfg.grad_accum):
            x, y = self._inputs(self.train_batches)
            last = micro == self.cfg.grad_accum - 1
            with distributed.gradient_sync(self.model, last):
                with autocast(self.cfg.dtype, self.dist.device):  # the forward pass only: backward runs in the
                    _, loss = self.model(**x, targets=y)  # formats autocast chose for each op's forward
                self.scaler.scale(loss / self.cfg.grad_accum).backward()
            total += loss.item()
        optimizer_step(self.optimizer, lr_at(step, self.cfg), self.cfg.grad_clip, self.scaler)
        return total / self.cfg.grad_accum, 1, self.tokens_per_step

    def _private_step(self, step: int) -> tuple[float, int, int]:
        """One DP-SGD step over a Poisson batch of blocks, in chunks that bound the per-example gradients' memory."""
        inputs, y = self._inputs(self.train_batches)
        x = inputs["idx"]
        if not len(x):  # nothing drawn: nothing to learn from, nothing spent
            return 0.0, 0, self.tokens_per_step

        def mean_loss(rows: range) -> torch.Tensor:
            with autocast(self.cfg.dtype, self.dist.device):
                return self.model(x[rows.start:rows.stop], y[rows.start:rows.stop])[1]

        summed = privacy.private_step(self.optimizer, lr_at(step, self.cfg), privacy.chunks(range(len(x))), mean_loss)
        return summed / len(x), 1, self.tokens_per_step

    def learning_rate(self, step: int) -> float:
        return lr_at(step, self.cfg)

    def figures(self, step: int, train_loss: float, rate: float, elapsed: float) -> dict[str, float]:
        """Both splits' loss on the fixed evaluation windows (the training loss is measured there too)."""
        losses = self.evaluate()
        row = {"iter": step, "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr_at(step, self.cfg),
               "tokens_per_s": rate, "elapsed_s": elapsed}
        if self.cfg.objective == "mlm":
            row["val_mask_acc"] = losses["val_mask_acc"]
        if self.private:
            row["epsilon"] = self.private.epsilon()
        return row

    def tracker(self) -> Tracker:
        fields = [*METRIC_FIELDS, *(["val_mask_acc"] if self.cfg.objective == "mlm" else []),
                  *(["epsilon"] if self.private else [])]
        sinks = tracking_sinks(self.cfg, self.out, self.sections, "iter", self.dist.is_main) + self.sinks
        return Tracker(self.out, self.total_steps, self.start_step, self.dist.is_main, self.cfg.tensorboard, fields,
                       sinks=sinks)


def layered_configs(recipe: dict[str, Any], flags: Any = None, preset_name: str | None = None
                    ) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """The model and training configs of a recipe: defaults < preset < YAML < flags (a Namespace or dict).
    The vocabulary comes from the prepared data, causality from the objective."""
    train = resolve(TrainConfig, recipe.get("train"), flags)
    if not train.data:
        raise BigModelError("pretrain needs --data DIR (a folder made by `bigmodel prepare`)")
    preset_name = preset_name or recipe.get("preset")
    if train.init and not train.resume:  # a resumed run's saved model: section already holds the shape
        model = init_config(train, recipe, flags, preset_name)
        return model, train, {"preset": None, "model": model, "train": train}
    model_values = {"vocab_size": load_meta(train.data)["vocab_size"], "causal": train.objective != "mlm"}
    model_values.update(preset(preset_name) if preset_name else {})
    model = resolve(ModelConfig, model_values, recipe.get("model"), flags)
    return model, train, {"preset": preset_name, "model": model, "train": train}


def init_config(train: TrainConfig, recipe: dict[str, Any], flags: Any, preset_name: str | None) -> ModelConfig:
    """`--init`'s model config: its shape, with the block size and dropout the recipe or flags give."""
    values = {**(recipe.get("model") or {}),
              **{k: v for k, v in (flags if isinstance(flags, dict) else vars(flags or {})).items()
                 if k in {f.name for f in dataclasses.fields(ModelConfig)} and v is not None}}
    changed = sorted(set(values) - {"block_size", "dropout"})
    if changed or preset_name:
        raise BigModelError(f"--init {train.init} fixes the model's shape; only --block-size and --dropout may "
                            f"change (given: {', '.join(changed) or '--preset'})")
    base = load_backbone(train.init, torch.device("cpu"), Storage.of(train))[0].config
    if values.get("block_size", 0) > base.block_size:
        raise BigModelError(f"--block-size {values['block_size']} exceeds --init's context of {base.block_size}")
    return dataclasses.replace(base, **values)


def pretrain(model_cfg: ModelConfig, cfg: TrainConfig, sections: dict[str, Any],
             sinks: list[Sink] | None = None) -> dict[str, float]:
    """Train as `cfg` says (under torchrun: one process of many); the last evaluation."""
    try:
        return Trainer(model_cfg, cfg, sections, sinks).fit()
    finally:  # after the trainer (and DDP's reducer) is gone: freeing it later can deadlock in gloo
        distributed.teardown()
