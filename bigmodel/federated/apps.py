"""The Flower apps: `server` (a ServerApp running FedAvg, FedProx or FedAdam over the global model)
and `client` (a ClientApp that fine-tunes on the data its SuperNode was started with).

Flower loads them by name (`bigmodel.federated.apps:server`, `...:client`) in the processes its
SuperLink and SuperNodes start. The server reads its recipe from the run config's `recipe` path;
a client reads only `data` (its labelled file) from its node config.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from bigmodel.federated.rounds import GlobalModel, local_round, read_recipe

server = ServerApp()
client = ClientApp()


def make_strategy(global_model: GlobalModel, clients: int) -> FedAvg:
    """The aggregation rule the recipe names; every round trains on every connected client it needs."""
    fed = global_model.fed
    needed = fed.min_clients or clients

    def aggregate_metrics(replies: list[RecordDict], weight_key: str) -> MetricRecord:
        metrics = [dict(reply["metrics"]) for reply in replies]
        global_model.record_clients(metrics)
        examples = sum(m[weight_key] for m in metrics)
        return MetricRecord({"train_loss": sum(m["train_loss"] * m[weight_key] for m in metrics) / max(examples, 1),
                             "num-examples": examples})

    common: dict[str, Any] = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": needed,
                              "min_available_nodes": needed, "train_metrics_aggr_fn": aggregate_metrics}
    if fed.strategy == "fedprox":
        return FedProx(proximal_mu=fed.proximal_mu, **common)
    if fed.strategy == "fedadam":
        return FedAdam(eta=fed.server_lr, **common)
    return FedAvg(**common)


@server.main()
def run_server(grid: Grid, context: Context) -> None:
    fed, local = read_recipe(str(context.run_config["recipe"]))
    global_model = GlobalModel(fed, local)
    with global_model.tracker:
        remaining = fed.rounds - global_model.first_round + 1
        if remaining > 0:
            make_strategy(global_model, fed.clients).start(
                grid=grid, initial_arrays=ArrayRecord(global_model.weights()), num_rounds=remaining,
                timeout=fed.round_timeout, train_config=ConfigRecord(global_model.message()),
                evaluate_fn=lambda r, arrays: MetricRecord(global_model.evaluate(r, arrays.to_torch_state_dict())))


@client.train()
def train(msg: Message, context: Context) -> Message:
    data = str(context.node_config["data"])
    client_id = int(context.node_config.get("client", context.node_id % 1_000_000))
    config = dict(msg.content["config"])
    # the client and its file's name fix the seed, not the folder a run happens to sit in
    seed = int(config.get("server-round", 0)) * 1_000 + zlib.crc32(f"{client_id}:{Path(data).name}".encode()) % 1_000
    weights, metrics = local_round(config, msg.content["arrays"].to_torch_state_dict(), data, seed)
    metrics["client"] = client_id
    return Message(RecordDict({"arrays": ArrayRecord(weights), "metrics": MetricRecord(metrics)}), reply_to=msg)
