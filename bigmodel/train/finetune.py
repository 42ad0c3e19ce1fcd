"""Fine-tuning for classification and regression: pretrained backbone + task head.

Batches group texts of similar length (shuffled groups, so the order stays random), which
on short-sentence datasets such as SST-2 cuts the padded tokens several-fold. `full`
trains everything, `freeze` only the head and the top N blocks, `lora` low-rank adapters
(the `peft` library) plus the head, merged into a plain checkpoint at the end.
"""

from __future__ import annotations

import copy
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm import tqdm

from bigmodel.config import FinetuneConfig
from bigmodel.data.collate import collate, encode, pad_id
from bigmodel.data.labelled import Example, label_ids, read_labelled
from bigmodel.errors import BigModelError
from bigmodel.evaluate.classify import classification_metrics
from bigmodel.infer.classify import predict_scores
from bigmodel.model.checkpoint import load_checkpoint, save_checkpoint
from bigmodel.model.heads import HeadConfig, SequenceModel
from bigmodel.model.quantize import is_int8
from bigmodel.model.transformer import Transformer
from bigmodel.train.trainer import autocast, make_optimizer

LORA_TARGETS = ["qkv", "proj", "up", "down", "gate"]


def load_backbone(init: str) -> tuple[Transformer, Tokenizer]:
    """A bigmodel checkpoint, or a Hugging Face folder (or packaged short name) imported."""
    from bigmodel.model.hf import find_hf_folder, from_hf, read_hf_tokenizer

    path = Path(init)
    if (path / "model.json").is_file() or (path / "best").is_dir() or (path / "last").is_dir():
        model, tok, _ = load_checkpoint(path)
        if is_int8(model):
            raise BigModelError(f"{init}: an int8 checkpoint cannot be trained; start from the one it came from")
        return model, tok
    folder = find_hf_folder(init)
    return from_hf(folder), read_hf_tokenizer(folder)


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


def augment(text: str, rng: random.Random, p: float = 0.1) -> str:
    """Random word deletion and one random swap: cheap noise for small datasets."""
    words = [w for w in text.split() if rng.random() > p] or text.split()
    if len(words) > 1:
        i, j = rng.randrange(len(words)), rng.randrange(len(words))
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


def targets_of(examples: list[Example], head: HeadConfig) -> torch.Tensor:
    if head.task == "regress":
        try:
            return torch.tensor([float(e.label) for e in examples])
        except ValueError as e:
            raise BigModelError(f"--task regress needs numeric labels ({e})") from None
    index = {label: i for i, label in enumerate(head.labels)}
    return torch.tensor([index[e.label] for e in examples])


def apply_method(model: SequenceModel, cfg: FinetuneConfig) -> torch.nn.Module:
    """Choose what trains; returns the module to call (a peft wrapper for LoRA)."""
    if cfg.method == "freeze":
        blocks = model.backbone.blocks
        keep = max(0, min(cfg.freeze_layers, len(blocks)))
        for p in model.backbone.parameters():
            p.requires_grad = False
        trainable = [*blocks[len(blocks) - keep:], model.backbone.norm_f] if keep else []
        for module in trainable:
            for p in module.parameters():
                p.requires_grad = True
        return model
    if cfg.method == "lora":
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise BigModelError("--method lora needs the peft library: pip install 'bigmodel[lora]'") from None

        targets = sorted({name.rsplit(".", 1)[-1] for name, _ in model.backbone.named_modules()} & set(LORA_TARGETS))
        config = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.05, target_modules=targets,
                            modules_to_save=["classifier"])
        return get_peft_model(model, config)
    return model


def plain_model(runner: torch.nn.Module, cfg: FinetuneConfig) -> SequenceModel:
    """What a checkpoint holds: for LoRA, a copy with the adapters merged, so training goes on."""
    if cfg.method != "lora":
        return runner
    merged = copy.deepcopy(runner).merge_and_unload()
    backbone = merged.backbone
    if backbone.config.tie_embeddings:  # the copy unties them; the checkpoint format expects them shared
        backbone.lm_head.weight = backbone.tok_emb.weight
    return merged


def task_loss(head: HeadConfig, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if head.task == "regress":
        return F.mse_loss(scores.squeeze(-1), targets.float())
    return F.cross_entropy(scores, targets)


def score(head: HeadConfig, scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 for classification, MSE for regression; `metric` is higher-is-better."""
    if head.task == "regress":
        mse = F.mse_loss(scores.squeeze(-1), targets.float()).item()
        return {"mse": mse, "metric": -mse}
    figures = classification_metrics(targets.tolist(), scores.argmax(-1).tolist(), head.labels)
    return {"accuracy": figures["accuracy"], "macro_f1": figures["macro_f1"], "metric": figures["accuracy"]}


def finetune(cfg: FinetuneConfig) -> dict[str, float]:
    """Train the head (and what `method` allows) and keep the best checkpoint by val metric."""
    for name in ("init", "train", "val"):
        if not getattr(cfg, name):
            raise BigModelError(f"finetune needs --{name}")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    train = read_labelled(cfg.train, cfg.text_column, cfg.label_column)
    val = read_labelled(cfg.val, cfg.text_column, cfg.label_column)
    if cfg.max_train:
        train = train[:cfg.max_train]
    backbone, tok = load_backbone(cfg.init)
    labels = label_ids(train, val) if cfg.task == "classify" else []
    head = HeadConfig(task=cfg.task, labels=labels, pooling="last" if backbone.config.causal else "mean")
    model = SequenceModel(backbone, head)
    runner = apply_method(model, cfg)
    trainable = sum(p.numel() for p in runner.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"{cfg.method}: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)")

    pad = pad_id(tok)
    max_length = min(cfg.max_length, backbone.config.block_size)
    train_y, val_y = targets_of(train, head), targets_of(val, head)
    val_ids = encode(tok, [e.text for e in val], max_length)
    optimizer = make_optimizer(runner, cfg, torch.device("cpu"))
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup * total_steps)

    def lr_factor(s: int) -> float:  # linear warm-up, then linear decay to zero
        return (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total_steps - s) / (total_steps - warmup))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    eval_every = cfg.eval_every or steps_per_epoch
    out = Path(cfg.out)
    best: dict[str, float] = {"metric": -math.inf}
    stale, step, seen, started = 0, 0, 0, time.perf_counter()

    def evaluate_and_keep() -> bool:
        """Evaluate; save when best; True when patience has run out."""
        nonlocal best, stale
        rate = seen / (time.perf_counter() - started)  # training only: taken before evaluating
        figures = score(head, predict_scores(runner, val_ids, pad, head.n_outputs, cfg.dtype), val_y)
        figures.update(step=step, examples_per_s=rate, trainable_params=trainable, total_params=total)
        shown = " | ".join(f"{k} {figures[k]:.4f}" for k in ("accuracy", "macro_f1", "mse", "examples_per_s")
                           if k in figures)
        tqdm.write(f"step {step:>6} | {shown}")
        if figures["metric"] > best["metric"]:
            best, stale = figures, 0
            save_checkpoint(out / "best", plain_model(runner, cfg), tok, {"finetune": cfg, "val": figures})
        else:
            stale += 1
        return stale >= cfg.patience

    with tqdm(total=total_steps, desc="finetune", unit="step", mininterval=0.5) as bar:
        for _ in range(cfg.epochs):
            texts = [augment(e.text, rng) if cfg.augment else e.text for e in train]
            ids = encode(tok, texts, max_length)
            for batch in length_grouped_batches([len(r) for r in ids], cfg.batch_size, rng):
                x, mask = collate([ids[i] for i in batch], pad)
                with autocast(cfg, torch.device("cpu")):
                    scores = runner(x, mask).float()
                loss = task_loss(head, scores, train_y[batch])
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in runner.parameters() if p.requires_grad], 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
                step += 1
                seen += len(batch)
                bar.update(1)
                bar.set_postfix_str(f"loss {loss.item():.4f} {seen / (time.perf_counter() - started):.1f} ex/s",
                                    refresh=False)
                if step % eval_every == 0 and evaluate_and_keep():
                    return best
    if step % eval_every:
        evaluate_and_keep()
    return best
