"""The Transformer family in one file, read top to bottom: GPT-style decoders, BERT-style
encoders and T5/BART-style encoder-decoders.

Every variant is a flag on `ModelConfig`: causal or bidirectional attention, pre- or
post-norm blocks, LayerNorm or RMSNorm, learned or rotary positions, GELU or SwiGLU MLP,
grouped-query attention (`n_kv_head < n_head`), token-type embeddings, tied embeddings, and
an encoder in front (`encoder_layers`) whose output the decoder blocks cross-attend to.
Images and audio enter the same encoder blocks through a front end (`frontends.py`) in
place of the token embedding.
Attention goes through `F.scaled_dot_product_attention`; generation passes a preallocated
`KVCache` (`cache.py`) so each new token costs one small forward pass, and an encoder-decoder
computes its cross-attention keys and values once per source (`Memory`). The linear layers
take a faster path for decoding steps on the CPU (`decoding.py`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from bigmodel.config import ModelConfig
from bigmodel.errors import BigModelError
from bigmodel.model.cache import CacheStep, KVCache
from bigmodel.model.decoding import Linear
from bigmodel.model.frontends import MelStem, make_frontend
from bigmodel.model.lora import Adapter, RowAdapters


def linear(layer: nn.Module, x: torch.Tensor, lora: RowAdapters | None) -> torch.Tensor:
    """A linear layer, plus its LoRA update for the rows whose adapter adapts it."""
    return layer(x) if lora is None else lora.linear(layer, x)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def rope_tables(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every (position, frequency) pair, shape (block_size, head_dim // 2)."""
    inv_freq = rope_frequencies(config.rope_base, config.head_dim)
    if config.rope_scaling == "linear":  # positions stretched evenly
        inv_freq = inv_freq / config.rope_factor
    elif config.rope_scaling == "llama3":
        inv_freq = llama3_frequencies(inv_freq, config.rope_factor)
    angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def rope_frequencies(base: float, head_dim: int) -> torch.Tensor:
    """The rotation speed of each pair of dimensions, in radians per position."""
    half = head_dim // 2
    return 1.0 / base ** (torch.arange(half, dtype=torch.float32) / half)


LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def llama3_frequencies(inv_freq: torch.Tensor, factor: float) -> torch.Tensor:
    """Llama 3.1's scaling (`LLAMA3_ROPE`): frequencies slower than `original / low` positions per turn are
    divided by `factor`, those faster than `original / high` kept, the band between blended smoothly."""
    low, high = LLAMA3_ROPE["low_freq_factor"], LLAMA3_ROPE["high_freq_factor"]
    original = LLAMA3_ROPE["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv_freq
    blend = ((original / wavelength - low) / (high - low)).clamp(0, 1)  # 0: long wavelengths, 1: short
    return (1 - blend) * inv_freq / factor + blend * inv_freq


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of each head by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.config = config
        self.layer = layer
        kv_width = config.n_kv_head * config.head_dim
        self.qkv = Linear(config.n_embd, config.n_embd + 2 * kv_width, bias=config.bias or config.qkv_bias)
        self.proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.qk_norm:
            self.q_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps)
            self.k_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps)

    def heads(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, lora: RowAdapters | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, n_head, T, head_dim), keys and values (B, n_kv_head, T, head_dim), rotated for RoPE."""
        cfg = self.config
        B, T, C = x.shape
        kv_width = cfg.n_kv_head * cfg.head_dim
        q, k, v = linear(self.qkv, x, lora).split((C, kv_width, kv_width), dim=2)
        q = q.view(B, T, cfg.n_head, cfg.head_dim).transpose(1, 2)
        k = k.view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
        v = v.view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def shared(self, k: torch.Tensor) -> torch.Tensor:
        """Grouped-query attention: each key/value head serves n_head // n_kv_head query heads."""
        return k.repeat_interleave(self.config.n_head // self.config.n_kv_head, dim=1)

    def weights(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                padding_mask: torch.Tensor | None) -> torch.Tensor:
        """The attention probabilities (B, n_head, T, T) that `forward` applies without a cache, spelled
        out (SDPA never shows them): for explanations, not for speed."""
        q, k, _ = self.heads(x, rope)
        scores = q @ self.shared(k).transpose(-2, -1) / math.sqrt(self.config.head_dim)
        T = x.size(1)
        if self.config.causal:
            scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=x.device).tril(), float("-inf"))
        if padding_mask is not None:
            scores = scores.masked_fill(~padding_mask[:, None, None, :], float("-inf"))
        return scores.softmax(-1)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                step: CacheStep | None, padding_mask: torch.Tensor | None, lora: RowAdapters | None = None
                ) -> torch.Tensor:
        cfg = self.config
        B, T, C = x.shape
        q, k, v = self.heads(x, rope, lora)
        past = 0
        if step is not None:
            past = step.start
            k, v = step.update(self.layer, k, v)
        mask = None if step is None else step.mask  # ragged rows: each sees its own past
        if mask is None and cfg.causal and T > 1 and (past or padding_mask is not None):
            # new tokens see all of the past and the causal part of themselves
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        if padding_mask is not None:  # padding keys are hidden from every query (4-D: packed rows' own mask)
            keys = padding_mask if padding_mask.dim() == 4 else padding_mask[:, None, None, :]
            mask = keys if mask is None else mask & keys
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=cfg.causal and T > 1 and mask is None,
            dropout_p=cfg.dropout if self.training else 0.0, enable_gqa=cfg.n_kv_head != cfg.n_head,
        )  # grouped-query attention without copying the cache's keys and values per query head
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(linear(self.proj, y, lora))


@dataclass
class Memory:
    """An encoded source as the decoder sees it: each decoder block's cross-attention keys and
    values, computed once per source and reused at every decoding step."""

    keys: list[torch.Tensor]  # per decoder layer: (B, n_head, S, head_dim)
    values: list[torch.Tensor]
    mask: torch.Tensor  # (B, 1, 1, S): True for the source's real tokens

    def select(self, index: torch.Tensor) -> Memory:
        """The memory of rows `index` (a row per beam, or a subset of the batch); itself when that is all of it."""
        if len(index) == self.mask.size(0) and bool((index == torch.arange(len(index), device=index.device)).all()):
            return self
        return Memory([k[index] for k in self.keys], [v[index] for v in self.values], self.mask[index])


class CrossAttention(nn.Module):
    """Queries from the decoder, keys and values from the encoder's output; no positions (the
    source's were added in the encoder), no causal mask (the whole source is known)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.q = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.kv = Linear(config.n_embd, 2 * config.n_embd, bias=config.bias)
        self.proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def keys_values(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, C = states.shape
        k, v = self.kv(states).view(B, S, 2, self.config.n_head, self.config.head_dim).permute(2, 0, 3, 1, 4)
        return k.contiguous(), v.contiguous()  # read at every decoding step: a third faster contiguous

    def forward(self, x: torch.Tensor, memory: Memory, layer: int, lora: RowAdapters | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q = linear(self.q, x, lora).view(B, T, self.config.n_head, self.config.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, memory.keys[layer], memory.values[layer], attn_mask=memory.mask,
                                           dropout_p=self.config.dropout if self.training else 0.0)
        return self.resid_dropout(linear(self.proj, y.transpose(1, 2).contiguous().view(B, T, C), lora))


class MLP(nn.Module):
    """GELU: up, gelu, down. SwiGLU: silu(gate) * up, down, at 2/3 of the width so it costs the same."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        self.approximate = "tanh" if config.mlp == "gelu_tanh" else "none"
        hidden = config.mlp_hidden or 4 * config.n_embd
        if self.swiglu:
            hidden = config.mlp_hidden or 64 * math.ceil(hidden * 2 / 3 / 64)
            self.gate = Linear(config.n_embd, hidden, bias=config.bias)
        self.up = Linear(config.n_embd, hidden, bias=config.bias)
        self.down = Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, lora: RowAdapters | None = None) -> torch.Tensor:
        up = linear(self.up, x, lora)
        h = F.silu(linear(self.gate, x, lora)) * up if self.swiglu else F.gelu(up, approximate=self.approximate)
        return self.dropout(linear(self.down, h, lora))


class Block(nn.Module):
    """Pre-norm: x + attn(norm(x)), then x + mlp(norm(x)). Post-norm (BERT): norm(x + attn(x)), ...
    An encoder-decoder's decoder blocks cross-attend to the source between the two."""

    def __init__(self, config: ModelConfig, layer: int, cross: bool = False) -> None:
        super().__init__()
        self.norm_first = config.norm_first
        self.layer = layer
        self.norm1 = make_norm(config)
        self.attn = SelfAttention(config, layer)
        if cross:
            self.norm_cross = make_norm(config)
            self.cross = CrossAttention(config)
        self.norm2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                step: CacheStep | None, padding_mask: torch.Tensor | None, memory: Memory | None = None,
                lora: RowAdapters | None = None) -> torch.Tensor:
        if self.norm_first:
            x = x + self.attn(self.norm1(x), rope, step, padding_mask, lora)
            if memory is not None:
                x = x + self.cross(self.norm_cross(x), memory, self.layer, lora)
            return x + self.mlp(self.norm2(x), lora)
        x = self.norm1(x + self.attn(x, rope, step, padding_mask, lora))
        if memory is not None:
            x = self.norm_cross(x + self.cross(x, memory, self.layer, lora))
        return self.norm2(x + self.mlp(x, lora))


class Transformer(nn.Module):
    activation_checkpointing = False  # training keeps each block's input alone and recomputes the rest backward

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        text = config.frontend == "tokens"
        if text:
            self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        else:
            self.frontend = make_frontend(config)
        if config.positions == "learned":
            self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        else:
            cos, sin = rope_tables(config)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        if config.type_vocab_size:
            self.type_emb = nn.Embedding(config.type_vocab_size, config.n_embd)
        self.embed_norm = make_norm(config) if config.embed_norm else nn.Identity()
        self.drop = nn.Dropout(config.dropout)
        seq2seq = config.encoder_layers > 0
        if seq2seq:
            if config.source == "mel":  # Whisper: features through convolutions, then the encoder's own positions
                self.src_stem = MelStem(config)
                self.src_pos = nn.Embedding(config.source_positions, config.n_embd)
            elif not config.share_embeddings:
                self.src_emb = nn.Embedding(config.vocab_size, config.n_embd)
            bidirectional = replace(config, causal=False, encoder_layers=0, source="tokens")
            self.encoder = nn.ModuleList(Block(bidirectional, i) for i in range(config.encoder_layers))
            self.encoder_norm = make_norm(config) if config.norm_first else nn.Identity()
        self.blocks = nn.ModuleList(Block(config, i, cross=seq2seq) for i in range(config.n_layer))
        self.norm_f = make_norm(config) if config.norm_first else nn.Identity()  # post-norm ends normalised
        if text:  # images and audio have task heads only (heads.py)
            self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
            if config.tie_embeddings:
                self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so depth doesn't blow up the stream.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "cross.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * (config.n_layer + config.encoder_layers)))

    @classmethod
    def empty(cls, config: ModelConfig, device: str = "cpu") -> Transformer:
        """A model with its parameters allocated but not initialised, to load weights into: drawing 124M
        random numbers that a checkpoint overwrites costs seconds. On `device="meta"` they have no storage
        at all, for `load_state_dict(assign=True)` to hand them the loaded tensors themselves."""
        with torch.device("meta"):
            model = cls(config)
        if device != "meta":
            model = model.to_empty(device=device)
        if config.tie_embeddings:  # to_empty gives each name its own tensor
            model.lm_head.weight = model.tok_emb.weight
        if config.positions == "rope":  # buffers a checkpoint does not hold
            model.rope_cos, model.rope_sin = rope_tables(config)
        return model

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # a ViT's patch projection is a linear map per patch: as small as the positions, so they count from step 0
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters that compute (position embeddings aside; tied weights counted once)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.positions == "learned":
            n -= self.pos_emb.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, last_only: bool = False,
                padding_mask: torch.Tensor | None = None, token_types: torch.Tensor | None = None,
                source: torch.Tensor | None = None, source_mask: torch.Tensor | None = None,
                memory: Memory | None = None, label_smoothing: float = 0.0, segments: torch.Tensor | None = None,
                logits_at: torch.Tensor | None = None, adapters: Sequence[Adapter | None] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for `idx` (B, T) and, with `targets`, the mean cross-entropy (-1 is ignored).

        With a `cache`, `idx` holds only the new tokens and positions continue after the
        cached ones. `last_only` computes logits for the final position alone (generation).
        `padding_mask` (B, T) is True for real tokens; `token_types` are segment ids. An
        encoder-decoder reads the `source` ids (and their `source_mask`), or a `memory`
        encoded before. `segments` (B, T) numbers the sequences packed into each row (see
        `hidden_states`). `logits_at` (B, T), True where logits are needed, runs the head there
        alone and returns them as (N, V): a chat row's loss falls on its answer, a fraction of its
        tokens, and logits over the whole vocabulary are most of a training step's memory.
        `adapters` names each row's LoRA adapter (None: the base alone) for this call only.
        """
        if self.config.frontend != "tokens":
            raise BigModelError(f"a {self.config.frontend} model has no language-model head; it needs a task head")
        if source is not None:
            memory = self.encode(source, source_mask)
        x = self.hidden_states(idx, cache, padding_mask, token_types, memory, segments, adapters)
        if last_only:
            x = x[:, -1:, :]
        if logits_at is not None:
            x, targets = x[logits_at], None if targets is None else targets[logits_at]
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                                   ignore_index=-1, label_smoothing=label_smoothing)
        return logits, loss

    def embed(self, idx: torch.Tensor, positions: torch.Tensor | None = None, length: int = 0,
              token_types: torch.Tensor | None = None, table: nn.Embedding | None = None,
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Token (or front-end) vectors of `idx` plus positions (and segments); the rotary tables when
        positions rotate. Without `positions`, they count from 0. `length`, the longest row's length
        counting the cached past, is checked on the host."""
        if self.config.frontend == "tokens":
            x = (self.tok_emb if table is None else table)(idx)
        else:
            x = self.frontend(idx)
        B, T = x.shape[:2]
        if positions is None:
            positions, length = torch.arange(T, device=x.device), T
        if length > self.config.block_size:
            unit = "tokens" if self.config.frontend == "tokens" else "positions"
            raise BigModelError(f"sequence of {length} {unit} is longer than the context ({self.config.block_size})")
        rope = None
        if self.config.positions == "learned":
            x = x + self.pos_emb(positions.expand(B, T))  # a batch dimension, for per-example gradients (DP)
        else:  # per-row positions (B, T) broadcast over the heads
            rope = (self.rope_cos[positions], self.rope_sin[positions])
            if positions.dim() == 2:
                rope = (rope[0][:, None], rope[1][:, None])
        if self.config.type_vocab_size:
            x = x + self.type_emb(token_types if token_types is not None else torch.zeros_like(idx))
        return self.drop(self.embed_norm(x)), rope

    def encode(self, source: torch.Tensor, source_mask: torch.Tensor | None = None) -> Memory:
        """Run the encoder over `source` (B, S) once, or log-mel features (B, n_mels, frames); the decoder
        blocks' keys and values of it."""
        if not self.config.encoder_layers:
            raise BigModelError("this model has no encoder (encoder_layers is 0): it cannot read a source")
        if self.config.source == "mel":  # (B, n_mels, frames)
            x, rope = self.src_stem(source), None
            if x.size(1) > self.config.source_positions:
                raise BigModelError(f"{source.size(-1)} mel frames are more than the encoder takes "
                                    f"({2 * self.config.source_positions})")
            x = x + self.src_pos.weight[:x.size(1)]
        else:
            x, rope = self.embed(source, table=getattr(self, "src_emb", None))
        if source_mask is None:
            source_mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        for block in self.encoder:
            x = block(x, rope, None, source_mask)
        x = self.encoder_norm(x)
        keys, values = zip(*(block.cross.keys_values(x) for block in self.blocks), strict=True)
        return Memory(list(keys), list(values), source_mask[:, None, None, :])

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None,
                      padding_mask: torch.Tensor | None = None, token_types: torch.Tensor | None = None,
                      memory: Memory | None = None, segments: torch.Tensor | None = None,
                      adapters: Sequence[Adapter | None] | None = None) -> torch.Tensor:
        """The last layer's output (B, T, n_embd), before the language-model head.

        With `segments`, each row holds several sequences (numbered 1, 2, ...; 0 pads): positions
        restart at each, and a token attends only to its own sequence, as if each ran alone."""
        if (memory is None) != (self.config.encoder_layers == 0):
            raise BigModelError("an encoder-decoder needs a source to attend to; other models take none")
        step = None if cache is None else cache.begin(idx.size(1))
        lora = RowAdapters.of(adapters, idx.device)
        if segments is not None:
            T = idx.size(1)
            steps = torch.arange(T, device=idx.device).expand_as(segments)
            starts = torch.ones_like(segments, dtype=torch.bool)
            starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
            positions = steps - torch.where(starts, steps, 0).cummax(dim=1).values
            padding_mask = (segments[:, :, None] == segments[:, None, :])[:, None]
            x, rope = self.embed(idx, positions, T, token_types)
        elif step is None:
            x, rope = self.embed(idx, token_types=token_types)
        else:
            x, rope = self.embed(idx, step.positions, step.end, token_types)
        for block in self.blocks:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, step, padding_mask, memory, lora, use_reentrant=False)
            else:
                x = block(x, rope, step, padding_mask, memory, lora)
        if cache is not None:
            cache.lengths += idx.size(1)
        return self.norm_f(x)

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward, PaLM appendix B): 6N + 12·L·C·T."""
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
