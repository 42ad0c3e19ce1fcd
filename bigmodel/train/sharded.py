"""FSDP2 checkpoints: weights and optimizer state as `torch.distributed.checkpoint` shards, which
load onto any number of processes (two that saved, one that resumes), and the weights gathered
into the plain model every other command reads."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from bigmodel.model.checkpoint import assign_weights
from bigmodel.model.transformer import Transformer


def save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> Path:
    """Every rank writes its shards of weights and optimizer state into `folder` (collective).
    Before the first step there are no moments to save, and asking for them would create them
    (PyTorch's state-dict helper takes a zero step), putting Adam's step count off by one."""
    state = {"model": get_model_state_dict(model)}
    if optimizer.state:
        state["model"], state["optimizer"] = get_state_dict(model, optimizer)
    dcp.save(state, checkpoint_id=folder)
    return folder


def load(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Read shards into `model` and `optimizer`, sharded or not, however many processes saved them."""
    saved = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    if not any(key.startswith("optimizer.") for key in saved):  # saved before the first step
        state = {"model": get_model_state_dict(model)}
        dcp.load(state, checkpoint_id=folder)
        set_model_state_dict(model, state["model"])
        return
    weights, moments = get_state_dict(model, optimizer)  # the layout to fill
    state = {"model": weights, "optimizer": moments}
    dcp.load(state, checkpoint_id=folder)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def gathered(model: torch.nn.Module, is_main: bool) -> Transformer | None:
    """The whole model as a plain `Transformer` on rank 0's CPU (None elsewhere); collective."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main:
        return None
    plain = Transformer.empty(model.config)
    assign_weights(plain, full, "the gathered shards", "the model's config")
    return plain
