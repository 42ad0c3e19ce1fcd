"""The jobs `--dtype auto` times before choosing a number format: one step of a shallow copy of the
model (same width, heads, MLP and vocabulary) on the job's shape, in fp32 and in bf16. Matrix
products alone would mislead: a small model loses to autocast's casts what its products gain, and
decoding one token is bound by memory, where bf16 weights help."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from bigmodel.config import ModelConfig
from bigmodel.device import Precision, Step, autocast, choose_precision
from bigmodel.model.decoding import decoding_threads, uses_blas
from bigmodel.model.transformer import Transformer

TOKENS = 4096  # at most this many tokens per probe step: enough to show the kernels' speed, quick to run
DECODE_LAYERS = 12  # decoding one token reads every weight once: the copy needs the model's own balance of
# blocks to output head, or a large vocabulary's head decides alone


def training_precision(requested: str, device: torch.device, config: ModelConfig, batch: int,
                       length: int) -> Precision:
    """`choose_precision` for training this model on `batch` sequences of `length` tokens (autocast)."""
    batch = max(1, min(batch, TOKENS // length))
    return choose_precision(requested, device, f"train {_shape(config)} {batch}x{length}", config.n_embd,
                            lambda: training_step(config, batch, length))


def inference_precision(requested: str, device: torch.device, config: ModelConfig, decoding: bool) -> Precision:
    """`choose_precision` for running this model with its weights cast: batches of whole windows, or one new
    token of one sequence (`decoding`)."""
    batch, length = (1, 1) if decoding else (max(1, TOKENS // config.block_size), config.block_size)
    return choose_precision(requested, device, f"{'decode' if decoding else 'infer'} {_shape(config)} "
                            f"{batch}x{length}", config.n_embd, lambda: inference_step(config, batch, length))


def training_step(config: ModelConfig, batch: int, length: int) -> Step:
    """Forward and backward under autocast, as the training loops run them."""
    model = _copy(config, length, 2)
    x = torch.randint(config.vocab_size, (batch, length))

    def step(name: str) -> None:
        with torch.enable_grad(), autocast(name, torch.device("cpu")):
            _, loss = model(x, x)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def inference_step(config: ModelConfig, batch: int, length: int) -> Step:
    """A forward pass of the copy in fp32, and of a copy of it in bf16, as inference runs them: outside
    autograd, on the threads a decoding step is given (`decoding_threads`)."""
    models = {"fp32": _copy(config, length, DECODE_LAYERS if length == 1 else 2).eval()}
    models["bf16"] = copy.deepcopy(models["fp32"]).to(torch.bfloat16)
    x = torch.randint(config.vocab_size, (batch, length))

    def step(name: str) -> None:
        with torch.no_grad(), decoding_threads(uses_blas(models[name]), batch * length):
            models[name](x, last_only=length == 1)

    return step


def _copy(config: ModelConfig, length: int, layers: int) -> Transformer:
    """The model's shape in at most `layers` blocks, reading tokens (images and audio pass through the same
    blocks)."""
    return Transformer(replace(config, n_layer=min(layers, config.n_layer), encoder_layers=0, frontend="tokens",
                               source="tokens", dropout=0.0, block_size=max(config.block_size, length)))


def _shape(config: ModelConfig) -> str:
    """What the cache tells jobs apart by, besides their batch."""
    return (f"w{config.n_embd} h{config.n_head}/{config.n_kv_head} {config.mlp} {config.norm} v{config.vocab_size} "
            f"{'causal' if config.causal else 'bidirectional'}")
