"""Config dataclasses for each stage, loaded from YAML and overridden by command-line flags.

Every field of a stage's dataclass becomes a flag (`max_iters` → `--max-iters`), so a YAML
recipe and a command line speak the same names. Precedence: defaults < preset < YAML < flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import re
import textwrap
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from bigmodel.errors import BigModelError

WINDOW_SECONDS = 0.025  # audio: 25 ms analysis windows ...
HOP_SECONDS = 0.010  # ... every 10 ms, speech recognition's usual frames
TaskName = Literal["classify", "regress", "seq2seq", "qa", "retrieval", "ctc", "asr", "chat", "dpo"]  # finetune --task
Dtype = Literal["auto", "fp32", "bf16", "fp16"]  # auto: what this device runs fastest (see device.choose_precision)
DTYPES = typing.get_args(Dtype)


@functools.cache
def choices_of(cls: type) -> dict[str, tuple]:
    """The fields of a config class annotated `Literal[...]`, and the values each allows."""
    hints = typing.get_type_hints(cls)
    return {f.name: typing.get_args(hints[f.name]) for f in fields(cls)
            if typing.get_origin(hints[f.name]) is Literal}


class Checked:
    """Base of every config: a `Literal[...]` field refuses values outside its choices, naming the flag.

    Subclasses with their own checks call `super().__post_init__()` first."""

    required: ClassVar[tuple[str, ...]] = ()  # fields a command needs set, by flag or by the recipe
    positional: ClassVar[str] = ""  # a field given without a flag: `dataset NAME`, `registry ACTION`

    def __post_init__(self) -> None:
        for name, allowed in choices_of(type(self)).items():
            if getattr(self, name) not in allowed:
                said = name.upper() if name == self.positional else f"--{name.replace('_', '-')}"
                raise BigModelError(f"{said} must be one of {', '.join(map(str, allowed))}, "
                                    f"not {getattr(self, name)!r}")


@dataclass
class ModelConfig:
    """Shape and flavour of the network; saved as `model.json` beside every checkpoint."""

    vocab_size: int = 50304
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int = 0  # 0 means n_head (plain multi-head attention)
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layernorm"  # layernorm | rmsnorm
    positions: str = "learned"  # learned | rope
    mlp: str = "gelu"  # gelu | gelu_tanh (GPT-2's approximation) | swiglu
    mlp_hidden: int = 0  # the MLP's inner width; 0: 4 × n_embd (GELU) or 2/3 of that, rounded up to 64 (SwiGLU)
    qkv_bias: bool = False  # biases on the query, key and value projections even without `bias` (Qwen2)
    qk_norm: bool = False  # RMSNorm over each head's queries and keys before RoPE (Qwen3)
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    rope_scaling: str = "none"  # none | linear | llama3 (Llama 3.1's long-context frequencies, original 8,192)
    rope_factor: float = 1.0  # with rope_scaling: how many times longer the context is than trained
    causal: bool = True  # False: every token sees every other (an encoder, as BERT)
    norm_first: bool = True  # False: post-norm blocks, as BERT
    type_vocab_size: int = 0  # > 0: token-type (segment) embeddings, as BERT
    embed_norm: bool = False  # normalise the summed embeddings, as BERT
    encoder_layers: int = 0  # > 0: an encoder-decoder (T5/BART shape); n_layer counts the decoder's blocks
    share_embeddings: bool = True  # encoder-decoder: the encoder reads the decoder's token embedding
    source: str = "tokens"  # encoder-decoder: what the encoder reads, tokens or mel (log-mel features, as Whisper)
    source_positions: int = 0  # source mel: the encoder's positions (Whisper: 1500, for 30 s)
    frontend: str = "tokens"  # tokens | patches (images, as ViT) | mel (audio: log-mel frames); see frontends.py
    image_size: int = 224  # patches: images are resized to this square
    patch_size: int = 16  # patches: side of each square patch
    channels: int = 3  # patches: 1 for grayscale, 3 for RGB
    sample_rate: int = 16000  # mel: the rate every WAV file must have
    n_mels: int = 80  # mel: filterbank channels

    def __post_init__(self) -> None:
        if self.n_kv_head == 0:
            self.n_kv_head = self.n_head
        if self.frontend != "tokens":  # images and audio have no token table to tie
            self.tie_embeddings = False
        checks = {
            "n_embd must be divisible by n_head": self.n_embd % self.n_head == 0,
            "n_head must be divisible by n_kv_head": self.n_head % self.n_kv_head == 0,
            "norm must be layernorm or rmsnorm": self.norm in ("layernorm", "rmsnorm"),
            "positions must be learned or rope": self.positions in ("learned", "rope"),
            "rope_scaling must be none, linear or llama3": self.rope_scaling in ("none", "linear", "llama3"),
            "mlp must be gelu, gelu_tanh or swiglu": self.mlp in ("gelu", "gelu_tanh", "swiglu"),
            "an encoder-decoder's decoder must be causal": self.causal or not self.encoder_layers,
            "frontend must be tokens, patches or mel": self.frontend in ("tokens", "patches", "mel"),
            "image_size must be a multiple of patch_size": self.frontend != "patches" or (
                self.patch_size > 0 and self.image_size % self.patch_size == 0),
            "images and audio go through an encoder (causal: false, encoder_layers: 0)": self.frontend == "tokens"
            or not (self.causal or self.encoder_layers),
            "source must be tokens or mel": self.source in ("tokens", "mel"),
            "a mel source needs an encoder (encoder_layers) and its positions (source_positions)": self.source
            == "tokens" or (self.encoder_layers > 0 and self.source_positions > 0),
            "block_size, vocab_size and n_layer must be positive": min(self.block_size, self.vocab_size,
                                                                        self.n_layer) > 0,
        }
        for message, ok in checks.items():
            if not ok:
                raise BigModelError(f"model config: {message}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BigModelError(f"model config: unknown field(s) {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, dict] = {
    # nanoGPT's CPU recipe for character-level Shakespeare.
    "baby": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
    # nanoGPT's shakespeare_char GPU recipe.
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
}


def preset(name: str) -> dict:
    """The field overrides a named preset stands for."""
    if name not in PRESETS:
        raise BigModelError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


@dataclass
class DataConfig(Checked):
    """`bigmodel prepare`: raw files in, tokenizer and token shards out."""

    input: list[str] = field(default_factory=list)
    out: str = "data/prepared"
    text_field: str = "text"  # JSONL key holding the text
    text_column: str = "text"  # CSV/TSV column holding the text
    tokenizer: str = "bpe"  # bpe | char | path to an existing tokenizer.json
    vocab_size: int = 8192  # BPE only
    val_fraction: float = 0.1  # the last fraction of the token stream, as nanoGPT splits
    scrub_pii: bool = False
    dedup: bool = True


@dataclass
class StorageConfig(Checked):
    """How a command keeps the checkpoints it writes and reads."""

    encrypt_key_env: str = ""  # environment variable with the AES key (base64 of 32 bytes) or a passphrase
    verify: bool = True  # check each file's SHA-256 against the checkpoint's manifest on load


@dataclass
class PrivacyConfig(Checked):
    """DP-SGD (Opacus) settings that pretraining and fine-tuning share; no ε means no DP."""

    dp_epsilon: float | None = None  # set: DP-SGD spending at most this ε over the run
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0  # each example's gradient is clipped to this norm before noise


@dataclass
class TrackingConfig(Checked):
    """Where a training run is recorded besides its own folder (metrics.csv, loss.png, TensorBoard)."""

    track: Literal["none", "mlflow"] = "none"  # mlflow: params, metrics per evaluation, plots, the model
    tracking_uri: str = ""  # MLflow store; empty: sqlite file mlflow.db beside the run folder


@dataclass
class DeviceConfig(Checked):
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N


@dataclass
class CkptConfig(DeviceConfig, StorageConfig):
    """A command that loads a checkpoint: which one, on what device, how it is stored."""

    ckpt: str = ""  # checkpoint folder, or a run folder (uses best/); or a Hugging Face folder, or `minilm`
    required: ClassVar[tuple[str, ...]] = ("ckpt",)


@dataclass
class PrecisionConfig(Checked):
    dtype: Dtype = "auto"  # auto: bf16 where this device runs it faster (a short probe, cached), else fp32


@dataclass
class TextColumnConfig(Checked):
    text_column: str = "text"  # the CSV/TSV/JSONL column with the text (or an image's or a clip's path)


@dataclass
class LabelColumnsConfig(TextColumnConfig):
    label_column: str = "label"


@dataclass
class PairColumnsConfig(Checked):
    source_column: str = "source"  # seq2seq: the input text; retrieval: the query; ctc: the WAV file
    target_column: str = "target"  # seq2seq: the text to produce; retrieval: the document; ctc: the transcript


@dataclass
class LexiconConfig(Checked):
    """Speech recognizers: decode against a word list and its bigram model instead of greedily."""

    lexicon: str = ""  # a .txt of transcripts, or a CSV/TSV/JSONL and --lexicon-column
    lexicon_column: str = "text"  # the transcripts' column
    beam_width: int = 128  # lexicon decoding's beam
    lm_weight: float = 0.8  # weight of the word bigram log-probability
    word_bonus: float = 2.5  # score added per word (longer transcripts)


@dataclass
class TrainConfig(TrackingConfig, PrivacyConfig, StorageConfig, DeviceConfig):
    """`bigmodel pretrain`: the optimisation loop and what it records."""

    data: str = ""
    out: str = "runs/pretrain"
    init: str = ""  # continue pretraining this checkpoint, HF folder or GGUF (its shape; --block-size may shrink)
    objective: Literal["clm", "mlm", "span"] = "clm"  # next token | masked tokens (--no-causal) | T5's spans
    max_iters: int = 2000
    batch_size: int = 12  # sequences per micro-batch per process
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4  # the floor cosine decay ends on
    warmup_iters: int = 100
    lr_decay_iters: int = 0  # 0 means max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    eval_interval: int = 250
    eval_iters: int = 20
    save_interval: int = 0  # 0 means at every evaluation
    dtype: Dtype = "auto"  # autocast; fp16 with loss scaling
    compile: bool = False
    strategy: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: whole model per process | FSDP2, sharded per block
    seed: int = 1337
    resume: bool = False
    tensorboard: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_iters < 0:
            raise BigModelError("--max-iters must be 0 (save the initial model) or more")
        for name in ("batch_size", "grad_accum", "eval_interval", "eval_iters"):
            if getattr(self, name) <= 0:
                raise BigModelError(f"--{name.replace('_', '-')} must be positive")


Method = Literal["full", "freeze", "lora"]


@dataclass(frozen=True)
class Tuning:
    """What a fine-tune of one task by one method starts from when neither a flag nor the recipe says."""

    lr: float
    epochs: int = 3
    warmup: float = 0.1  # fraction of the steps
    batch_size: int = 32
    lora_r: int = 8
    lora_alpha: float | None = None  # None: twice the rank, whatever rank a run asks for
    lora_dropout: float = 0.05
    rpo_alpha: float = 0.0  # dpo: weight of the chosen answers' own loss (RPO)


_LABEL = {"full": Tuning(5e-5), "freeze": Tuning(1e-4), "lora": Tuning(1e-3)}
_GENERATIVE = {"full": Tuning(2e-5, epochs=2, batch_size=8), "freeze": Tuning(1e-4, epochs=2, batch_size=8),
               "lora": Tuning(3e-3, epochs=2, batch_size=8)}
TUNINGS: dict[tuple[str, str], Tuning] = {
    **{(task, method): t for task in ("classify", "regress") for method, t in _LABEL.items()},
    **{("qa", method): t for method, t in {**_LABEL, "full": Tuning(1.5e-4)}.items()},
    **{("retrieval", method): t for method, t in {**_LABEL, "full": Tuning(2e-5)}.items()},
    **{("ctc", method): t for method, t in {**_LABEL, "full": Tuning(1e-4)}.items()},
    **{("seq2seq", method): t for method, t in {**_LABEL, "lora": Tuning(9e-3, batch_size=8)}.items()},
    **{("asr", method): t for method, t in {"full": Tuning(1e-5, batch_size=8), "freeze": Tuning(1e-4, batch_size=8),
                                            "lora": Tuning(1e-3, batch_size=8)}.items()},
    **{("chat", method): t for method, t in _GENERATIVE.items()},
    **{("dpo", method): t for method, t in {"full": Tuning(5e-7, epochs=1, batch_size=8),
                                            "freeze": Tuning(5e-6, epochs=1, batch_size=8),
                                            "lora": Tuning(5e-4, epochs=1, batch_size=8, rpo_alpha=1.0)}.items()},
}
"""Fine-tuning's defaults by (task, method), the one place they live; `docs` and `finetune --help` print
it with where each figure comes from (`TUNING_SOURCES`). A flag or a recipe's value always wins."""

TUNING_SOURCES = {
    "full": "classify/regress 5e-5: BERT's fine-tuning range (2e-5 to 5e-5) and transformers' Trainer "
            "default; qa 1.5e-4: a new span head on a small encoder wants more (bench/defaults.py, MiniLM on 600 "
            "questions of `dataset qa`: F1 20.3 at 1.7e-5, 36.5 at 5e-5, 78.9 at 1.5e-4); retrieval 2e-5: "
            "sentence-transformers' default; chat 2e-5: TRL's SFTConfig and torchtune's "
            "full recipes; dpo 5e-7: the alignment handbook's DPO recipe; asr 1e-5: Hugging Face's Whisper "
            "fine-tuning guide; seq2seq and ctc: this project's runs",
    "freeze": "half-way between full and LoRA: only the head and the top blocks move",
    "lora": "1e-3, alpha twice the rank: SmolLM2 chat exact match 0% at 5e-5, 74% at 1e-3 (issue 45's run); chat "
            "3e-3, seq2seq 9e-3: bench/defaults.py on `dataset rule` scored chat 28% exact at 3.3e-4, 41% at 1e-3, "
            "56% at 3e-3, 33% at 9e-3, and seq2seq chrF 1.6, 21.8, 26.2, 31.7 at 3.3e-4, 1e-3, 3e-3, 9e-3; "
            "asr 1e-3: bench/whisper_finetune.py (Whisper tiny.en on espeak-ng's voice); "
              "torchtune's LoRA recipes use 3e-4 at rank 64; dpo 5e-4 at rank 8 with RPO's chosen-answer loss (alpha "
            "1): torchtune's LoRA-DPO recipe and this project's DPO runs (docs: Chat fine-tuning and DPO)",
}


def tuning_table() -> str:
    """The defaults each (task, method) gets, as `finetune --help` shows them."""
    lines = ["defaults by task and method (a flag or the recipe wins):",
             f"  {'task':<10}{'method':<8}{'lr':>8}{'epochs':>8}{'batch':>7}{'warmup':>8}   lora r/alpha/dropout"]
    for (task, method), t in TUNINGS.items():
        lora = f"{t.lora_r}/{t.lora_alpha or 2 * t.lora_r:g}/{t.lora_dropout:g}" if method == "lora" else ""
        lora += f"   rpo_alpha {t.rpo_alpha:g}" if t.rpo_alpha else ""
        lines.append(f"  {task:<10}{method:<8}{t.lr:>8.0e}{t.epochs:>8}{t.batch_size:>7}{t.warmup:>8.2f}   {lora}")
    lines += ["where they come from:", *(textwrap.fill(f"{m}: {why}", 100, initial_indent="  ",
                                                       subsequent_indent="    ") for m, why in TUNING_SOURCES.items())]
    return "\n".join(lines)


@dataclass
class FinetuneConfig(TrackingConfig, PrivacyConfig, StorageConfig, DeviceConfig, LabelColumnsConfig,
                     PairColumnsConfig):
    """`bigmodel finetune`: a pretrained model, a labelled dataset, a task head."""

    init: str = ""  # bigmodel checkpoint or Hugging Face folder (or `minilm`)
    task: TaskName = "classify"  # qa: SQuAD JSON; chat, dpo: JSONL conversations, preference pairs
    train: str = ""
    val: str = ""
    out: str = "runs/finetune"
    label_smoothing: float = 0.1  # seq2seq: mass spread over the vocabulary in the teacher-forced loss
    chat_template: str = ""  # chat, dpo: a Jinja file instead of the model's own (ChatML when it has none)
    packing: bool = False  # chat: several conversations per row, each attending only to itself
    beta: float = 0.1  # dpo: strength of the pull towards the reference model (higher stays closer)
    rpo_alpha: float | None = None  # dpo: weight of the chosen answers' own loss per token, added to DPO's (RPO)
    method: Method = "full"
    freeze_layers: int = 2  # with freeze: how many top blocks still train
    lora_r: int | None = None  # LoRA's rank (default: by task and method, see below)
    lora_alpha: float | None = None  # LoRA's scale is alpha / r (default: by task and method)
    lora_dropout: float | None = None  # on LoRA's input (default: by task and method)
    lora_targets: list[str] = field(default_factory=list)  # layers LoRA adapts, by last name (default: every one)
    epochs: int | None = None  # default: by task and method, see below
    lr: float | None = None  # peak learning rate (default: by task and method, see below)
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    warmup: float | None = None  # fraction of the steps (default: by task and method)
    max_length: int = 128
    batch_size: int | None = None  # examples per micro-batch per process (default: by task and method)
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 1.0  # 0 disables clipping
    head_dropout: float = 0.1  # before the classification/regression layer
    dtype: Dtype = "auto"  # autocast; fp16 with loss scaling
    activation_checkpointing: bool = False  # recompute each block's activations backward: less memory, slower
    eval_every: int = 0  # steps between evaluations (and saves of last/); 0 means once per epoch
    patience: int = 3  # evaluations without improvement before stopping
    max_train: int = 0  # use only the first N training rows; 0 means all
    augment: bool = False  # text: random deletion and swap of words; images: random crops; audio: gain, shift, noise
    hflip: bool = False  # images, with --augment: random horizontal flips too (not for digits or letters)
    seed: int = 1337
    resume: bool = False  # continue from out/last exactly where it stopped
    tensorboard: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value in asdict(TUNINGS[self.task, self.method]).items():  # what neither flag nor recipe set
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.lora_alpha is None:
            self.lora_alpha = 2.0 * self.lora_r
        for name in ("epochs", "batch_size", "grad_accum", "max_length", "lora_r"):
            if getattr(self, name) <= 0:
                raise BigModelError(f"--{name.replace('_', '-')} must be positive")
        if not (self.lr > 0 and math.isfinite(self.lr)):  # NaN fails every comparison: refused too
            raise BigModelError(f"--lr must be a positive number, not {self.lr}")
        if not 0 <= self.lora_dropout < 1 or not 0 <= self.warmup < 1:
            raise BigModelError("--lora-dropout and --warmup must be fractions in [0, 1)")


@dataclass
class FederatedConfig(TrackingConfig, StorageConfig):
    """`bigmodel federated`: rounds of Flower over clients that each fine-tune on their own data.

    How each client trains locally is the `finetune:` section (its `epochs` are local epochs per round)."""

    out: str = "runs/federated"
    val: str = ""  # labelled file the server evaluates the global model on after every round
    train: str = ""  # one labelled file to partition among simulated clients ...
    client_files: list[str] = field(default_factory=list)  # ... or one file per client
    clients: int = 4
    partition: Literal["iid", "label-skew"] = "iid"  # label-skew: Dirichlet over each label's examples
    alpha: float = 0.5  # label-skew concentration: small is skewed
    rounds: int = 5
    strategy: Literal["fedavg", "fedprox", "fedadam"] = "fedavg"
    proximal_mu: float = 0.01  # fedprox: weight of the pull towards the global model
    server_lr: float = 0.01  # fedadam: the server optimizer's step size
    min_clients: int = 0  # clients a round needs (0: all); a round finishes with whoever answered
    round_timeout: float = 3600.0  # seconds a round waits for replies
    superlink: str = ""  # host:port of a running SuperLink's control API; empty: start one here
    superlink_insecure: bool = False  # no TLS to that SuperLink (loopback experiments only)
    root_certificates: str = ""  # CA certificate for a TLS SuperLink
    port_base: int = 0  # local federation: first of the SuperLink's ports (0: free ones)
    resume: bool = False  # continue from out/last, the last completed round
    seed: int = 1337

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds < 1 or self.clients < 1:
            raise BigModelError("--rounds and --clients must be at least 1")


@dataclass
class DecodingConfig(Checked):
    """How a model continues a text: sampling, or a beam search for sequence-to-sequence models."""

    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 means greedy
    top_k: int = 0  # 0 keeps every token
    top_p: float = 1.0
    min_p: float = 0.0  # drop tokens less likely than this fraction of the likeliest one
    beams: int = 1  # sequence-to-sequence: > 1 is a beam search of this width (temperature is then unused)
    length_penalty: float = 1.0  # beam search ranks by log-probability / length ** this
    seed: int = 1337

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or not 0 <= self.min_p <= 1:
            raise BigModelError("need --temperature >= 0, 0 < --top-p <= 1, 0 <= --min-p <= 1 and --top-k >= 0")
        if self.max_new_tokens < 0 or self.beams < 1:
            raise BigModelError("need --max-new-tokens >= 0 and --beams >= 1")


@dataclass
class GenerateConfig(DecodingConfig):
    """`bigmodel generate`: how to continue a prompt, and how many continuations."""

    num_samples: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_samples < 1:
            raise BigModelError("need --num-samples >= 1")


@dataclass
class ServeConfig(PrecisionConfig, CkptConfig):
    """`bigmodel serve`: one checkpoint behind an OpenAI-compatible HTTP API."""

    host: str = "127.0.0.1"  # loopback only, unless told otherwise
    port: int = 8000
    api_key_env: str = ""  # name of an environment variable holding the key clients must send
    max_batch: int = 16  # sequences decoded together in one batch
    max_queue: int = 64  # sequences waiting for a batch row; more get 429
    max_new_tokens_limit: int = 512  # the largest max_tokens a request may ask
    max_logprobs: int = 20  # the most alternatives per token a request may ask (`logprobs`, `top_logprobs`)
    prefix_cache_mb: float = 256  # keys/values of prompt prefixes kept for reuse (LRU); 0 turns it off
    speculate: int = 0  # greedy requests: draft up to this many tokens a step (prompt lookup), check them at once
    draft_model: str = ""  # a small checkpoint with the same tokenizer that drafts for --speculate instead
    lora_modules: list[str] = field(default_factory=list)  # NAME=DIR: LoRA fine-tunes of --ckpt served by name
    runtime_lora: bool = False  # allow /v1/load_lora_adapter and /v1/unload_lora_adapter (paths on this machine)
    quantize: Literal["none", "int8"] = "none"  # int8: dynamic int8 linear layers at load time
    chat_template: str = ""  # Jinja file for chat, or `plain` (default: the model's own; none: no chat)
    tracking_uri: str = ""  # registry of --ckpt models:/NAME/VERSION (default: MLFLOW_TRACKING_URI, runs/mlflow.db)

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.max_batch, self.max_new_tokens_limit) < 1 or min(self.max_queue, self.max_logprobs,
                                                                     self.prefix_cache_mb, self.speculate) < 0:
            raise BigModelError("--max-batch and --max-new-tokens-limit must be at least 1, --max-queue, "
                                "--max-logprobs, --prefix-cache-mb and --speculate at least 0")
        if self.draft_model and not self.speculate:
            raise BigModelError("--draft-model drafts --speculate N tokens a step: give --speculate too")
        names = set()
        for spec in self.lora_modules:
            name, _, path = spec.partition("=")
            if not (name and path) or ":" in name or name in names:
                raise BigModelError(f"--lora-modules {spec}: expected NAME=DIR, each NAME once and without ':'")
            names.add(name)

    def adapters(self) -> dict[str, str]:
        """`--lora-modules` as name → folder."""
        return dict(spec.split("=", 1) for spec in self.lora_modules)

    def api_key(self) -> str | None:
        """The key clients must send, read from `api_key_env` (None when no variable is named)."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise BigModelError(f"--api-key-env {self.api_key_env}: that environment variable is empty or unset")
        return key


class Section(dict):
    """A mapping read from a YAML file, which remembers where it came from for the errors that name it."""

    def __init__(self, values: dict, where: str) -> None:
        super().__init__(values)
        self.where = where


yaml.SafeDumper.add_representer(Section, yaml.SafeDumper.represent_dict)  # written back as the plain mapping


def load_yaml(path: str | None) -> dict:
    """The YAML recipe as a dict ({} without one); errors name the file. Each section (a mapping under a
    top-level key) is a `Section` naming the file and key, so `resolve` can name them when a value is wrong."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise BigModelError(f"config file {path}: not found")
    try:
        values = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise BigModelError(f"config file {path}: not valid YAML ({e})".splitlines()[0]) from None
    if not isinstance(values, dict):
        raise BigModelError(f"config file {path}: expected a mapping at the top level")
    return Section({k: Section(v, f"config file {path}, {k}:") if isinstance(v, dict) else v
                    for k, v in values.items()}, f"config file {path}:")


def coerce(value: Any, kind: Any, where: str) -> Any:
    """`value` as the annotation `kind` wants it, or one line naming `where` (file and key), the value and the
    type. YAML reads `5e-5` as a string and `1` as an int: a float field takes both, as numbers."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, where)
            except BigModelError:
                continue
    elif origin is Literal:
        return value if value in args else str(value) if str(value) in map(str, args) else value  # Checked says no
    elif origin in (list, tuple) and isinstance(value, (list, tuple)):
        return origin(coerce(v, args[0], where) for v in value)
    elif origin is dict and isinstance(value, dict) or kind is Any:
        return value
    elif kind is bool and isinstance(value, bool):
        return value
    elif kind is float and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        with contextlib.suppress(ValueError):
            return float(value)
    elif kind is int and not isinstance(value, bool):
        if isinstance(value, int) or isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+", value.strip()):
            return int(value)
    elif kind is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    options = [a for a in args if a is not type(None)] if origin in (typing.Union, types.UnionType) else [kind]
    name = " or ".join(getattr(k, "__name__", None) or str(k).replace("typing.", "") for k in options)
    raise BigModelError(f"{where} {value!r} is not {'an' if name[0] in 'aeiou' else 'a'} {name}")


@functools.cache
def annotations_of(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def resolve(cls: type, *layers: dict | object | None) -> Any:
    """Build `cls` from layered values (mappings, or parsed flags); later layers win, None values are skipped.
    A mapping's values are checked against the fields' types (`coerce`), so a wrong one is named where it was
    written, not found later inside the code that uses it."""
    known = {f.name for f in fields(cls)}
    hints = annotations_of(cls)
    values: dict[str, Any] = {}
    for layer in layers:
        if layer is None:
            continue
        items = layer if isinstance(layer, dict) else vars(layer)
        if isinstance(layer, dict):
            where = getattr(layer, "where", f"{cls.__name__}:")
            unknown = sorted(set(items) - known)
            if unknown:
                raise BigModelError(f"{where} unknown field(s) {', '.join(unknown)}")
            items = {k: coerce(v, hints[k], f"{where} {k}:") for k, v in items.items() if v is not None}
        values.update({k: v for k, v in items.items() if k in known and v is not None})
    try:
        return cls(**values)
    except TypeError as e:
        raise BigModelError(f"{cls.__name__}: {e}") from None


def yaml_text(sections: dict[str, Any]) -> str:
    """The resolved config (dataclasses become mappings) as YAML, for a run to be reproduced."""
    plain = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in sections.items()}
    return yaml.safe_dump(plain, sort_keys=False)


__all__ = ["Checked", "CkptConfig", "DataConfig", "DecodingConfig", "DeviceConfig", "FederatedConfig",
           "FinetuneConfig", "GenerateConfig", "LabelColumnsConfig", "LexiconConfig", "ModelConfig",
           "PairColumnsConfig", "PrecisionConfig", "PrivacyConfig", "ServeConfig", "StorageConfig", "TextColumnConfig",
           "TrackingConfig", "TrainConfig", "load_yaml", "preset", "resolve", "yaml_text"]
