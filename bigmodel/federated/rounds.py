"""What happens in a round, on each side of Flower's wire.

The server holds the global model, sends it with everything a client needs to rebuild it
(model shape, head, tokenizer, the local training recipe), and after each round evaluates
the aggregate on its validation file, logs it and checkpoints it. A client needs nothing but
its own data: it rebuilds the model from the message, fine-tunes it on its partition with the
ordinary fine-tuning loop, and returns the weights and how many examples it saw.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from bigmodel.config import FederatedConfig, FinetuneConfig, ModelConfig
from bigmodel.data.inputs import TextInputs
from bigmodel.data.labelled import Example, label_ids, read_labelled
from bigmodel.data.tokenizer import tokenizer_from_json
from bigmodel.errors import BigModelError
from bigmodel.evaluate.classify import head_scores
from bigmodel.infer.classify import predict_scores
from bigmodel.model.checkpoint import (
    RESUMED,
    Storage,
    assign_weights,
    load_backbone,
    load_trainer_state,
    resolve_checkpoint,
    save_checkpoint,
)
from bigmodel.model.heads import HeadConfig, SequenceModel, pooling_for
from bigmodel.model.probe import training_precision
from bigmodel.model.transformer import Transformer
from bigmodel.tasks.label import targets_of, task_loss
from bigmodel.train import distributed
from bigmodel.train.finetune import FineTuner, plain_model
from bigmodel.train.optim import KeepBest
from bigmodel.train.track import Tracker, tracking_sinks

RECIPE = "recipe.yaml"
FIELDS = ["round", "train_loss", "val_loss", "accuracy", "macro_f1", "clients", "examples", "examples_per_s",
          "elapsed_s"]


def read_recipe(path: str | Path) -> tuple[FederatedConfig, FinetuneConfig]:
    sections = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return FederatedConfig(**sections["federated"]), FinetuneConfig(**sections["finetune"])


def model_message(model: SequenceModel, tok: Any, local: FinetuneConfig) -> dict[str, str]:
    """What a client needs, besides the weights, to rebuild and train the global model."""
    return {"model": json.dumps(model.backbone.config.to_dict()), "head": model.head_config.to_json(),
            "tokenizer": tok.to_str(), "finetune": json.dumps(dataclasses.asdict(local))}


def rebuild(config: dict[str, Any], weights: dict[str, torch.Tensor]) -> tuple[SequenceModel, Any, FinetuneConfig]:
    """The global model, tokenizer and local recipe a round's message describes."""
    local = FinetuneConfig(**json.loads(config["finetune"]))
    backbone = Transformer(ModelConfig.from_dict(json.loads(config["model"])))
    model = SequenceModel(backbone, HeadConfig.from_json(config["head"]), local.head_dropout)
    assign_weights(model, weights, "the round's global weights", "the model the server described")
    return model, tokenizer_from_json(config["tokenizer"], Path("the server's tokenizer")), local


def local_round(config: dict[str, Any], weights: dict[str, torch.Tensor], data: str, seed: int
                ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """A client's round: fine-tune the global model on `data`; the new weights and what it measured."""
    model, tok, local = rebuild(config, weights)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:  # the loop's `out`; a local round saves nothing
        local = dataclasses.replace(local, train=data, val=data, out=scratch, seed=seed, resume=False,
                                    tensorboard=False, track="none", encrypt_key_env="")
        tuner = FineTuner(local, distributed.setup(local.device), start=(model, tok))
        loss, examples = tuner.local_round(float(config.get("proximal-mu", 0.0)))
        trained = plain_model(tuner.runner, local)
    return ({k: v.detach().cpu() for k, v in trained.state_dict().items()},
            {"train_loss": loss, "num-examples": examples, "seconds": time.perf_counter() - started})


def known_examples(fed: FederatedConfig, local: FinetuneConfig) -> list[Example]:
    """The rows the server can read: the file it partitions, or the clients' files when they are here. A
    remote federation's server knows its validation file only: there every client label must be in it."""
    files = [fed.train] if fed.train else [f for f in fed.client_files if Path(f).is_file()]
    return [e for f in files for e in read_labelled(f, local.text_column, local.label_column)]


class GlobalModel:
    """The server's side: the model being trained, its evaluation, its log and its checkpoints."""

    def __init__(self, fed: FederatedConfig, local: FinetuneConfig) -> None:
        self.fed, self.local, self.out = fed, local, Path(fed.out)
        self.storage = Storage.of(fed)
        val = read_labelled(fed.val, local.text_column, local.label_column)
        torch.manual_seed(local.seed)
        backbone, self.tok, _ = load_backbone(local.init, torch.device("cpu"), Storage.of(local))
        labels = label_ids(known_examples(fed, local) + val, val) if local.task == "classify" else []
        head = HeadConfig(task=local.task, labels=labels, pooling=pooling_for(backbone.config))
        self.model = SequenceModel(backbone, head, local.head_dropout).eval()
        self.inputs = TextInputs(self.tok, min(local.max_length, backbone.config.block_size))
        self.val_ids = self.inputs.read([e.text for e in val])
        self.val_y = targets_of(val, head)
        self.dtype = training_precision(local.dtype, torch.device("cpu"), backbone.config, local.batch_size,
                                        min(local.max_length, backbone.config.block_size)).name  # as clients do
        self.best = KeepBest(minimize=local.task == "regress")
        self.first_round = 1
        if fed.resume:
            last = resolve_checkpoint(self.out, prefer="last")
            state = load_trainer_state(last, self.storage)
            assign_weights(self.model, self.storage.tensors(last)[0], last, RESUMED)
            self.first_round = int(state["round"]) + 1
            self.best.restore(state["best"])
        self.out.mkdir(parents=True, exist_ok=True)
        sinks = tracking_sinks(fed, self.out, {"federated": fed, "finetune": local}, "round", True)
        self.tracker = Tracker(self.out, fed.rounds, self.first_round - 1, True, False, FIELDS, desc="federated",
                               sinks=sinks,
                               keep_before=self.first_round)
        self.clients_csv = self.out / "clients.csv"
        kept = self.clients_csv.read_text().splitlines()[1:] if fed.resume and self.clients_csv.is_file() else []
        kept = [line for line in kept if int(line.split(",")[0]) < self.first_round]  # rounds to be run again go
        self.clients_csv.write_text("\n".join(["round,client,examples,train_loss,seconds", *kept]) + "\n")
        self.started = time.perf_counter()
        self.round_clients: list[dict[str, float]] = []

    def weights(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def message(self) -> dict[str, str]:
        return model_message(self.model, self.tok, self.local)

    def record_clients(self, metrics: list[dict[str, float]]) -> None:
        """The replies of the round being aggregated (called by the strategy)."""
        self.round_clients = metrics

    def evaluate(self, flower_round: int, weights: dict[str, torch.Tensor]) -> dict[str, float]:
        """Evaluate, log and checkpoint the global model after a round (round 0: before any)."""
        r = flower_round + self.first_round - 1
        if flower_round == 0 and r > 0:  # a resumed run: the starting point was logged before the stop
            return {}
        assign_weights(self.model, weights, "the aggregated weights", "the global model")
        scores = predict_scores(self.model, self.val_ids, self.inputs, self.model.head_config.n_outputs, self.dtype)
        figures = head_scores(self.model.head_config, scores, self.val_y)
        clients, self.round_clients = (self.round_clients if r else []), []
        if r and not clients:
            raise BigModelError(f"round {r}: no client returned a model; see the SuperNodes' logs")
        examples = sum(c["num-examples"] for c in clients)
        seconds = max((c["seconds"] for c in clients), default=0.0)  # the round waits for its slowest client
        row = {"round": r, "val_loss": task_loss(self.model.head_config, scores, self.val_y).item(), **figures,
               "train_loss": sum(c["train_loss"] * c["num-examples"] for c in clients) / examples if examples
               else math.nan, "clients": len(clients), "examples": examples,
               "examples_per_s": examples / seconds if seconds else 0.0,
               "elapsed_s": time.perf_counter() - self.started}
        self.tracker.evaluation(row)
        if r:
            self.tracker.step(row["train_loss"], self.local.lr, row["examples_per_s"])
            with self.clients_csv.open("a", newline="") as fh:
                writer = csv.writer(fh)
                for c in clients:
                    writer.writerow([r, c["client"], int(c["num-examples"]), c["train_loss"], c["seconds"]])
            sections = {"federated": self.fed, "finetune": self.local, "val": row}
            if self.best.improved(row["mse" if self.local.task == "regress" else "accuracy"]):
                save_checkpoint(self.out / "best", self.model, self.tok, sections, storage=self.storage)
            state = {"round": r, "best": self.best.state()}
            save_checkpoint(self.out / "last", self.model, self.tok, sections, state, self.storage)
        return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not math.isnan(v)}
