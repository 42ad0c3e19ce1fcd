"""The verbs that train: pretrain, finetune, federated, and the sweep over their recipes.

Their recipes have several sections (`model:` beside `train:`, `finetune:` beside `federated:`), so
each of these functions gets the parsed flags and layers defaults < preset < YAML < flags itself,
through the same `*_configs` functions the sweep uses."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from bigmodel.config import (
    Checked,
    FederatedConfig,
    FinetuneConfig,
    ModelConfig,
    TrackingConfig,
    TrainConfig,
    load_yaml,
    resolve,
)
from bigmodel.errors import BigModelError
from bigmodel.recipes.common import storage


@dataclass
class PresetConfig(Checked):
    """`bigmodel pretrain --preset`: a model shape by name, which `model:` and the flags then adjust."""

    preset: str = ""  # a named model shape: baby | small | gpt2 | gpt2-medium


@dataclass
class SweepConfig(TrackingConfig):
    """`bigmodel sweep`: an Optuna search over the finetune: (or train:) recipe that --config names."""

    trials: int = 12  # trials in all, counting those already run
    param: list[str] = field(default_factory=list)  # FIELD=loguniform:LO:HI | uniform:LO:HI | int:LO:HI | choice:A,B,..
    metric: str = ""  # figure to optimise (default: the one the runs keep their best by); losses, mse, cer lower
    out: str = "runs/sweep"  # trial folders, study.db, best.yaml and plots
    seed: int = 0  # the sampler's seed (each trial keeps the recipe's)


def pretrain_configs(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig, dict]:
    """Layer defaults < preset < YAML < flags; a resumed run starts from its saved config."""
    from bigmodel.model.checkpoint import RUN_CONFIG, read_sections
    from bigmodel.train.trainer import layered_configs

    recipe = load_yaml(args.config)
    if args.resume and args.out and (Path(args.out) / "last" / RUN_CONFIG).is_file():
        recipe = {**read_sections(Path(args.out) / "last", storage(args)), "preset": None}
    return layered_configs(recipe, args, args.preset)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from bigmodel.train.trainer import pretrain

    model, train, sections = pretrain_configs(args)
    result = pretrain(model, train, sections)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for all
        return
    if result:
        print(f"done: val loss {result['val_loss']:.4f} at iteration {int(result['iter'])}; "
              f"checkpoints in {train.out}/best and {train.out}/last")
    if train.dp_epsilon is not None:
        from bigmodel.model.checkpoint import Storage
        from bigmodel.train import privacy

        print(privacy.summary(Path(train.out), Storage.of(train)))


def cmd_finetune(args: argparse.Namespace) -> None:
    from bigmodel.model.checkpoint import Storage
    from bigmodel.train import privacy
    from bigmodel.train.finetune import finetune, finetune_configs

    cfg, scratch = finetune_configs(load_yaml(args.config), args)
    best = finetune(cfg, scratch)
    if best:  # a resumed run that had already finished evaluates nothing new
        figures = ("accuracy", "macro_f1", "mse", "val_loss", "token_accuracy", "exact_match", "f1", "recall_at_1",
                   "cer", "wer")
        shown = ", ".join(f"{k} {v:.4f}" for k, v in best.items() if k in figures)
        start = next(((k.removeprefix("start_"), v) for k, v in best.items() if k.startswith("start_")), None)
        if start and int(best["step"]) == 0:
            print(f"no evaluation beat the starting model ({start[0]} {start[1]:.4f}): {cfg.out}/best holds it "
                  "unchanged")
        else:
            began = f" (before training: {start[0]} {start[1]:.4f})" if start else ""
            print(f"best: {shown} at step {int(best['step'])}{began}; checkpoint in {cfg.out}/best")
    if cfg.dp_epsilon is not None:
        print(privacy.summary(Path(cfg.out), Storage.of(cfg)))


def cmd_federated(args: argparse.Namespace) -> None:
    from bigmodel.federated.launch import run_federated
    from bigmodel.train.track import read_metrics

    recipe = load_yaml(args.config)
    fed = resolve(FederatedConfig, recipe.get("federated"), args)
    local = resolve(FinetuneConfig, recipe.get("finetune"), args)
    out = run_federated(fed, local)
    rows = [r for r in read_metrics(out / "metrics.csv") if r["round"] > 0]
    if not rows:
        raise BigModelError(f"{out}: no round completed; Flower's logs are in {out / 'flower' / 'logs'}")
    best = max(rows, key=lambda r: -r["mse"] if "mse" in r else r["accuracy"])
    shown = f"mse {best['mse']:.4f}" if "mse" in best else f"accuracy {best['accuracy']:.4f}"
    print(f"{int(rows[-1]['round'])} rounds; best global {shown} after round {int(best['round'])}; "
          f"checkpoints in {out}/best and {out}/last; per-client figures in {out}/clients.csv")


def cmd_sweep(args: argparse.Namespace) -> None:
    from bigmodel.train.sweep import Param, sweep

    if not args.config:
        raise BigModelError("sweep needs --config FILE: the recipe whose fields the trials vary")
    recipe = load_yaml(args.config)
    cfg = resolve(SweepConfig, recipe.pop("sweep", None), args)
    params = [Param.parse(text) for text in cfg.param]
    study = sweep(recipe, params, cfg.trials, Path(cfg.out), cfg.metric, cfg.track, cfg.tracking_uri, cfg.seed)
    states = [t.state.name for t in study.trials]  # sweep() has checked that Optuna is installed
    print(f"{cfg.trials} trials: {states.count('COMPLETE')} complete, {states.count('PRUNED')} "
          f"pruned, {states.count('FAIL')} failed; best {study.user_attrs['metric']} {study.best_value:.4f} "
          f"(trial {study.best_trial.number}: {study.best_params})")
    print(f"best recipe {cfg.out}/best.yaml; plots {cfg.out}/history.png, {cfg.out}/importance.png; "
          f"study {cfg.out}/study.db")
