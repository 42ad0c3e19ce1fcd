"""Fine-tuning: a pretrained model trained for a task (see `tasks.py` for what each task adds).

Batches group examples of similar length (shuffled groups, so the order stays random), which
on short-sentence datasets such as SST-2 cuts the padded tokens several-fold. `full`
trains everything, `freeze` only the head and the top N blocks, `lora` low-rank adapters
(the `peft` library) plus the head, merged into a plain checkpoint at the end.

The loop keeps pretraining's promises with pretraining's pieces (`optim.py`, `track.py`,
`distributed.py`): clipping and accumulation, metrics.csv/loss.png/TensorBoard, DDP under
torchrun, and `last/` at every evaluation from which `--resume` continues exactly. Each
epoch's batch order comes from (seed, epoch) alone, so a resumed run finds its place by
counting steps.
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch.nn.parallel import DistributedDataParallel as DDP

from bigmodel.config import TUNINGS, FinetuneConfig, ModelConfig, resolve
from bigmodel.errors import BigModelError
from bigmodel.model import lora
from bigmodel.model.checkpoint import (
    RESUMED,
    Storage,
    assign_weights,
    load_backbone,
    load_into,
    load_trainer_state,
    resolve_checkpoint,
    save_checkpoint,
)
from bigmodel.model.formats import tokenizer_config, tokenizer_files
from bigmodel.model.heads import SequenceModel
from bigmodel.model.transformer import Transformer
from bigmodel.tasks import make_task
from bigmodel.tasks.base import Task, backbone_of
from bigmodel.tasks.label import LabelTask
from bigmodel.train import distributed, privacy
from bigmodel.train.loop import Loop
from bigmodel.train.optim import KeepBest, linear_lr, make_optimizer, optimizer_step, run_precision
from bigmodel.train.track import Sink, Tracker, tracking_sinks

LEARNING = 0.01  # the first evaluation must beat the start by this share of it, or the run says it is not learning
DIVERGING = 0.1  # ... and when its validation loss rose by more than this share, the step was too large


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort within windows of 50 batches by length, cut into batches, shuffle those."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def apply_method(model: torch.nn.Module, cfg: FinetuneConfig) -> torch.nn.Module:
    """Choose what trains; returns the module to call (a peft wrapper for LoRA)."""
    backbone = backbone_of(model)
    if cfg.method == "freeze":
        blocks = backbone.blocks
        keep = max(0, min(cfg.freeze_layers, len(blocks)))
        for p in backbone.parameters():
            p.requires_grad = False
        trainable = [*blocks[len(blocks) - keep:], backbone.norm_f] if keep else []
        for module in trainable:
            for p in module.parameters():
                p.requires_grad = True
        return model
    if cfg.method == "lora":
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise BigModelError("--method lora needs the peft library: pip install 'bigmodel[lora]'") from None

        targets = lora_targets(backbone, cfg)
        config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                            target_modules=targets,
                            modules_to_save=["classifier"] if isinstance(model, SequenceModel) else None)
        return get_peft_model(model, config)
    return model


def lora_targets(backbone: torch.nn.Module, cfg: FinetuneConfig) -> list[str]:
    """The layers LoRA adapts (`--lora-targets`, by last name; default every adaptable one), checked: each
    name must match a layer, and the rank must fit the smallest of them."""
    layers = {name: m for name, m in backbone.named_modules() if hasattr(m, "in_features")}
    adaptable = sorted({name.rsplit(".", 1)[-1] for name in layers} & set(lora.TARGETS))
    targets = cfg.lora_targets or adaptable
    unknown = [t for t in targets if t not in adaptable]
    if unknown:
        raise BigModelError(f"--lora-targets {' '.join(unknown)}: no such layer in this model (its adaptable "
                            f"layers: {', '.join(adaptable)})")
    name, smallest = min(((n, min(m.in_features, m.out_features)) for n, m in layers.items()
                          if n.rsplit(".", 1)[-1] in targets), key=lambda pair: pair[1])
    if cfg.lora_r > smallest:
        raise BigModelError(f"--lora-r {cfg.lora_r} is larger than layer {name} allows ({smallest}: a rank above a "
                            "layer's smaller side adds nothing but parameters)")
    return targets


def adapter_of(runner: torch.nn.Module, cfg: FinetuneConfig) -> dict[str, bytes]:
    """`adapter.safetensors` of a causal LM's LoRA run (names as in the plain model), so a server can keep
    it apart from the base and serve many (`model/lora.py`); nothing for other runs."""
    model = runner.get_base_model() if cfg.method == "lora" else runner
    if cfg.method != "lora" or isinstance(model, SequenceModel):  # a classifier's adapter needs its head too
        return {}
    factors = {name: (m.lora_A["default"].weight, m.lora_B["default"].weight)
               for name, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    scaling = {m.scaling["default"] for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    return {lora.ADAPTER: lora.adapter_file(factors, scaling.pop(), str(cfg.init))}


def plain_model(runner: torch.nn.Module, cfg: FinetuneConfig) -> torch.nn.Module:
    """What a checkpoint holds: for LoRA, a copy with the adapters merged, so training goes on. The copy
    is made on the host, tensor by tensor: a second copy of the model on a GPU at every evaluation could
    run it out of memory."""
    if cfg.method != "lora":
        return runner
    host: dict[int, torch.Tensor] = {id(p): torch.nn.Parameter(p.detach().cpu().clone(), p.requires_grad)
                                     for p in runner.parameters()}
    host.update({id(b): b.detach().cpu().clone() for b in runner.buffers()})
    merged = copy.deepcopy(runner, memo=host).merge_and_unload()
    backbone = backbone_of(merged)
    if backbone.config.tie_embeddings:  # the copy unties them; the checkpoint format expects them shared
        backbone.lm_head.weight = backbone.tok_emb.weight
    return merged


class FineTuner(Loop):
    """One fine-tuning run in the shared loop: data, model, optimizer and the state `--resume` restores;
    steps over length-grouped batches of each epoch, the best by the task's figure, early stopping."""

    def __init__(self, cfg: FinetuneConfig, dist: distributed.Dist,
                 start: tuple[SequenceModel, Tokenizer] | None = None, scratch: ModelConfig | None = None,
                 sinks: list[Sink] | None = None) -> None:
        """`start`: a model with its head (a federated round's global model) instead of `cfg.init`;
        `scratch`: a new model of this shape (images and audio, which have no pretrained checkpoint here);
        `sinks`: listeners to every evaluation besides the ones `--track` asks for (a sweep's pruner)."""
        super().__init__()
        self.spent.update(examples=0, tokens=0)  # trained on, by every process: the model card's compute figures
        for name in ("train", "val") if start or scratch else ("init", "train", "val"):
            if not getattr(cfg, name):
                raise BigModelError(f"finetune needs --{name}" + (" (or a model: section in --config)"
                                                                  if name == "init" else ""))
        self.scratch, self.sinks = scratch, sinks or []
        self.saved_cfg = cfg  # what checkpoints record (`dtype: auto` stays auto); the run uses the concrete dtype
        self.dist, self.out = dist, Path(cfg.out)
        torch.manual_seed(cfg.seed)
        self.storage = Storage.of(cfg)
        self.tokenizer_files: dict[str, str] = {}  # the chat template of the model it starts from
        if start:
            model, self.tok = start
            self.task: Task = LabelTask(cfg, None, self.tok, model)
        else:
            known: dict = {}  # the starting model's chat template and special tokens
            if scratch:
                backbone, self.tok = Transformer(scratch).to(dist.device), None
            else:
                backbone, self.tok, folder = load_backbone(cfg.init, dist.device, self.storage)
                self.tokenizer_files, known = tokenizer_files(folder), tokenizer_config(folder)
            self.task = make_task(cfg, backbone, self.tok, known)
            if self.task.tokenizer_config:  # chat: the template trained with is the one served with
                self.tokenizer_files.pop("chat_template.jinja", None)
                self.tokenizer_files["tokenizer_config.json"] = json.dumps(self.task.tokenizer_config, indent=2,
                                                                           ensure_ascii=False)
        model = self.task.model
        shape = backbone_of(model).config
        cfg, self.scaler = run_precision(cfg, dist.device, shape, cfg.batch_size, min(cfg.max_length, shape.block_size),
                                         speak=dist.is_main and not start)
        self.cfg = self.task.cfg = cfg
        self.runner = apply_method(model, cfg).to(dist.device)
        backbone_of(model).activation_checkpointing = cfg.activation_checkpointing
        self.anchor: list[torch.Tensor] = []  # FedProx: the round's starting point, which `proximal_mu` pulls towards
        self.proximal_mu = 0.0
        examples = self.task.examples
        if cfg.dp_epsilon is not None:
            privacy.check(cfg, examples, cfg.batch_size, {
                f"--task {cfg.task} yet": not self.task.private_ok,
                "--grad-accum above 1 yet": cfg.grad_accum > 1, "--resume yet": cfg.resume,
                "several processes (torchrun) yet": dist.world_size > 1,
                "--dtype fp16 (its loss scaling) yet": cfg.dtype == "fp16",
                "--activation-checkpointing (each block would run twice) yet": cfg.activation_checkpointing})
            privacy.freeze_embeddings(model)
        if cfg.task == "retrieval" and dist.world_size > 1:
            raise BigModelError("--task retrieval runs in one process (its negatives are the batch's own documents)")
        self.trainable = sum(p.numel() for p in self.runner.parameters() if p.requires_grad)
        self.total = sum(p.numel() for p in self.runner.parameters())
        self.optimizer = make_optimizer(self.runner, cfg, dist.device)
        self.model: torch.nn.Module = self.runner
        self.private: privacy.Privacy | None = None
        if cfg.dp_epsilon is not None:  # Poisson batches of the planned size, per-sample clipping, noise
            steps = cfg.epochs * math.ceil(examples / cfg.batch_size)
            self.model, self.optimizer, self.dp_batches, self.private = privacy.make_private(
                self.runner, self.optimizer, examples, cfg.batch_size, steps, cfg)
        global_batch = cfg.batch_size * dist.world_size  # as `epoch_batches` cuts them
        n_batches = examples // global_batch + (examples % global_batch >= dist.world_size)
        self.steps_per_epoch = len(self.dp_batches) if self.private else math.ceil(n_batches / cfg.grad_accum)
        if not self.steps_per_epoch:
            raise BigModelError(f"{cfg.train}: {examples} examples are too few for {dist.world_size} processes")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup = int(cfg.warmup * self.total_steps)
        self.eval_every = self.save_every = cfg.eval_every or self.steps_per_epoch
        self.best, self.metric = KeepBest(minimize=self.task.minimize, patience=cfg.patience), self.task.metric
        self.best_figures: dict[str, float] = {}
        self.start_figures: dict[str, float] = {}  # the starting model's evaluation (step 0)
        self.checked = False  # whether the first evaluation has been compared with the start
        self.evaluate_first = not cfg.resume and not start
        self.epoch: tuple[int, list[Any], list[list[int]]] | None = None  # the epoch being run, its items, batches
        torch.manual_seed(cfg.seed + dist.rank)  # dropout differs per rank; the initial weights did not
        if cfg.resume:
            self._restore()
        if dist.world_size > 1:
            self.model = DDP(self.runner, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)

    # --- state -------------------------------------------------------------------------

    def state(self, step: int) -> dict[str, Any]:
        state = {**super().state(step), "best_figures": self.best_figures, "start_figures": self.start_figures,
                 "optimizer": self.optimizer.state_dict()}
        if self.cfg.method == "lora":  # merged weights cannot be un-merged: keep the adapters themselves
            state["adapters"] = {k: v.detach().cpu() for k, v in self.runner.named_parameters() if v.requires_grad}
        return state

    def _restore(self) -> None:
        folder = resolve_checkpoint(self.out, prefer="last")
        state = load_trainer_state(folder, self.storage)
        if self.cfg.method == "lora":
            load_into(self.runner, state["adapters"], folder, RESUMED)
        else:
            assign_weights(self.runner, self.storage.tensors(folder)[0], folder, RESUMED)
        self.optimizer.load_state_dict(state["optimizer"])
        self.restore_state(state)
        self.best_figures = dict(state["best_figures"])
        self.start_figures, self.checked = dict(state.get("start_figures", {})), True

    def save(self, name: str, step: int, figures: dict[str, float]) -> None:
        state = self.state(step) if name == "last" else None  # every rank joins the RNG gather
        sections = {"finetune": self.saved_cfg, "val": figures, "start": self.start_figures,
                    "compute": self.compute(step),
                    **({"model": self.scratch} if self.scratch else {})}
        if self.private:
            sections["privacy"] = self.private.record()
        if self.dist.is_main:
            save_checkpoint(self.out / name, plain_model(self.runner, self.cfg), self.tok, sections, state,
                            self.storage, plain=self.tokenizer_files, files=adapter_of(self.runner, self.cfg))

    # --- loop --------------------------------------------------------------------------

    def epoch_batches(self, epoch: int) -> tuple[list[Any], list[list[int]]]:
        """This epoch's encoded examples and its global batches (lists of example indices), from (seed, epoch)."""
        rng = random.Random(self.cfg.seed * 1_000_003 + epoch)
        items = self.task.train_items(rng)
        if self.private:  # DP-SGD's guarantee rests on Poisson sampling: no grouping by length
            return items, [indices.tolist() for (indices,) in self.dp_batches]
        lengths = [self.task.length(item) for item in items]
        batches = length_grouped_batches(lengths, self.cfg.batch_size * self.dist.world_size, rng)
        # every process needs at least one example of each batch
        return items, [b for b in batches if len(b) >= self.dist.world_size]

    def train_step(self, step: int) -> tuple[float, int, int]:
        epoch, s = divmod(step, self.steps_per_epoch)
        if self.epoch is None or self.epoch[0] != epoch:
            self.epoch = (epoch, *self.epoch_batches(epoch))
        _, items, batches = self.epoch
        return self._step(step, items, batches[s * self.cfg.grad_accum:(s + 1) * self.cfg.grad_accum])

    def _step(self, step: int, items: list[Any], group: list[list[int]]) -> tuple[float, int, int]:
        """One optimizer step over a group of global micro-batches; this process's summed loss, the
        units it is summed over, and its examples.

        Each process takes its share of every global batch; the loss is scaled so that DDP's
        gradient average equals one process's mean over the whole group (per example, or per
        target token for seq2seq)."""
        cfg, dist = self.cfg, self.dist
        taken = [items[j] for b in group for j in b]
        self.spent["examples"] += len(taken)
        self.spent["tokens"] += sum(self.task.length(item) for item in taken)
        if self.private:
            return self._private_step(step, items, group[0])
        units = self.task.units(taken)
        summed, counted, examples = 0.0, 0, 0
        for i, batch in enumerate(group):
            mine = [items[j] for j in batch[dist.rank::dist.world_size]]
            last = i == len(group) - 1
            with distributed.gradient_sync(self.model, last):
                loss = self.task.loss(self.model, mine, dist.device)
                self.scaler.scale(loss * dist.world_size / units).backward()
            summed, counted, examples = summed + loss.item(), counted + self.task.units(mine), examples + len(mine)
        if self.proximal_mu:  # FedProx: the gradient of mu/2 * ||w - w_round_start||^2, scaled as the loss's
            scale = self.scaler.get_scale()  # fp16's loss scale (1 otherwise): the step unscales both together
            for p, start in zip(self._trainable(), self.anchor, strict=True):
                p.grad.add_(p.detach() - start, alpha=self.proximal_mu * scale)
        optimizer_step(self.optimizer, linear_lr(step, cfg.lr, self.warmup, self.total_steps), cfg.grad_clip,
                       self.scaler)
        return summed, counted, examples

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.runner.parameters() if p.requires_grad]

    def local_round(self, proximal_mu: float = 0.0) -> tuple[float, int]:
        """Every planned step, without evaluating or saving: a federated client's part of a round.
        The mean training loss and the examples seen."""
        if proximal_mu and self.private:
            raise BigModelError("FedProx's proximal term and DP-SGD's per-example clipping do not mix here")
        self.proximal_mu, self.anchor = proximal_mu, [p.detach().clone() for p in self._trainable()]
        self.runner.train()
        summed, counted, seen = 0.0, 0, 0
        for step in range(self.total_steps):
            loss, units, examples = self.train_step(step)
            summed, counted, seen = summed + loss, counted + units, seen + examples
        return summed / max(counted, 1), seen

    def _private_step(self, step: int, items: list[Any], batch: list[int]) -> tuple[float, int, int]:
        """One DP-SGD step over a Poisson batch, run as length-sorted chunks: sorting inside the batch
        saves the padding that length grouping saves elsewhere, without touching the sampling the
        privacy guarantee rests on."""
        if not batch:  # a Poisson batch may be empty: nothing to learn from, nothing spent
            return 0.0, 0, 0

        def mean_loss(chunk: list[int]) -> torch.Tensor:
            return self.task.loss(self.model, [items[i] for i in chunk], self.dist.device) / len(chunk)

        lr = linear_lr(step, self.cfg.lr, self.warmup, self.total_steps)
        ordered = sorted(batch, key=lambda i: self.task.length(items[i]))
        return privacy.private_step(self.optimizer, lr, privacy.chunks(ordered), mean_loss), len(batch), len(batch)

    def evaluate(self) -> dict[str, float]:
        """Val loss and metrics; every process computes the same, so all agree on when to stop."""
        figures = self.task.evaluate(self.runner)
        if self.private:
            figures["epsilon"] = self.private.epsilon()
        return figures

    def learning_rate(self, step: int) -> float:
        return linear_lr(step, self.cfg.lr, self.warmup, self.total_steps)

    def figures(self, step: int, train_loss: float, rate: float, elapsed: float) -> dict[str, float]:
        """The evaluation row; step 0's is the starting model's, which has trained on nothing yet."""
        return {"step": step, "epoch": step / self.steps_per_epoch, "train_loss": train_loss if step else math.nan,
                "lr": self.learning_rate(max(step - 1, 0)), "examples_per_s": rate, "elapsed_s": elapsed,
                **self.evaluate()}

    def on_evaluation(self, step: int, figures: dict[str, float]) -> None:
        """Remember where the run began; at the first evaluation after it, say so if the figure best/ is kept
        by has not moved from there, naming the knob that most often explains it."""
        if step == 0:
            self.start_figures = dict(figures)
            return
        if self.checked or not self.start_figures or not self.dist.is_main:
            return
        self.checked = True
        start, now = self.start_figures[self.metric], figures[self.metric]
        gain = (start - now if self.task.minimize else now - start) / max(abs(start), 1e-12)
        if gain >= LEARNING:
            return
        default = TUNINGS[self.cfg.task, self.cfg.method].lr
        loss_rose = figures.get("val_loss", 0.0) > (1 + DIVERGING) * self.start_figures.get("val_loss", math.inf)
        knob = (f"Lower --lr (this run: {self.cfg.lr:g}): the validation loss rose" if loss_rose else
                f"Raise --lr (this run: {self.cfg.lr:g}; the default for --method {self.cfg.method} is {default:g}) "
                f"or train longer (--epochs {self.cfg.epochs}: {self.total_steps} steps)")
        self._tracker.say(f"warning: after {step} steps val {self.metric} is {now:.4g}, against {start:.4g} before "
                          f"training: {'worse' if gain < 0 else 'hardly better'}; the model is not learning. {knob}")

    def on_best(self) -> None:
        self.best_figures = {**self.last, "trainable_params": self.trainable, "total_params": self.total,
                             **{f"start_{k}": v for k, v in self.start_figures.items() if k == self.metric}}
        if self.dist.is_main:
            self.task.plot_best(self.out)

    def result(self, last: dict[str, float]) -> dict[str, float]:
        return self.best_figures

    def tracker(self) -> Tracker:
        fields = ["step", "epoch", "train_loss", "val_loss", *self.task.figures, "lr", "examples_per_s", "elapsed_s",
                  *(["epsilon"] if self.private else [])]
        sections = {"finetune": self.saved_cfg, **({"model": self.scratch} if self.scratch else {})}
        sinks = tracking_sinks(self.cfg, self.out, sections, "step", self.dist.is_main) + self.sinks
        return Tracker(self.out, self.total_steps, self.start_step, self.dist.is_main, self.cfg.tensorboard, fields,
                       desc="finetune", keep_before=self.start_step + 1,  # its evaluation came before the save
                       sinks=sinks)

    def fit(self) -> dict[str, float]:
        """Train to the last step (or until patience runs out); the best evaluation's figures."""
        if self.dist.is_main:
            print(f"{self.cfg.method}: training {self.trainable:,} of {self.total:,} parameters "
                  f"({100 * self.trainable / self.total:.2f}%)")
        self.runner.train()  # checkpoints load in eval mode: dropout (and Opacus' hooks) need training mode
        return super().fit()


def finetune_configs(recipe: dict[str, Any], flags: Any = None) -> tuple[FinetuneConfig, ModelConfig | None]:
    """A recipe's fine-tuning config (defaults < YAML < flags, a Namespace or dict) and, for a model trained
    from scratch, its `model:` section."""
    model = ModelConfig.from_dict(recipe["model"]) if recipe.get("model") else None
    return resolve(FinetuneConfig, recipe.get("finetune"), flags), model


def finetune(cfg: FinetuneConfig, scratch: ModelConfig | None = None, sinks: list[Sink] | None = None
             ) -> dict[str, float]:
    """Fine-tune as `cfg` says (under torchrun: one process of many); the best evaluation's figures.
    With `scratch` and no `cfg.init`, the model starts from random weights of that shape."""
    dist = distributed.setup(cfg.device)
    try:
        return FineTuner(cfg, dist, scratch=None if cfg.init else scratch, sinks=sinks).fit()
    finally:
        distributed.teardown()
