"""The Llama family in and out: Llama, Mistral, Qwen2 (query/key/value biases), Qwen3 (query/key
norms), Phi-3 (its projections already fused) and the models built like them (SmolLM2). All are
pre-norm decoders with RoPE, RMSNorm, a SwiGLU MLP and grouped-query attention, which one
`Transformer` expresses with config flags; importing maps names and shapes, nothing more. Their
separate q/k/v projections join into our single `qkv`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from bigmodel.config import ModelConfig
from bigmodel.errors import BigModelError
from bigmodel.model.hf import check_exportable, load_state, read_hf_config, read_hf_weights, write_hf_folder
from bigmodel.model.transformer import LLAMA3_ROPE, Transformer

LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3")
# ours → theirs, inside block i (`model.layers.{i}.`); the norms of queries and keys are Qwen3's alone
BLOCK_NAMES = {"norm1": "input_layernorm", "attn.proj": "self_attn.o_proj", "norm2": "post_attention_layernorm",
               "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj", "mlp.down": "mlp.down_proj",
               "attn.q_norm": "self_attn.q_norm", "attn.k_norm": "self_attn.k_norm"}
QKV = ("q_proj", "k_proj", "v_proj")


def llama_config(hf: dict, where: str | Path) -> ModelConfig:
    """Our config for a Llama-family `config.json` (or the same values read from a GGUF file)."""
    model_type = hf.get("model_type", "llama")
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    unsupported = {
        f"hidden_act {hf.get('hidden_act')!r}": hf.get("hidden_act", "silu") != "silu",
        f"head_dim {hf.get('head_dim')} other than hidden_size / heads": hf.get("head_dim", hidden // heads)
        != hidden // heads,
        "attention_bias on every projection": hf.get("attention_bias", False) and model_type != "qwen2",
        "mlp_bias": hf.get("mlp_bias", False),
        "partial_rotary_factor below 1": (hf.get("rope_parameters") or hf).get("partial_rotary_factor", 1.0) != 1.0,
    }
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or {}  # transformers 5 says rope_parameters
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    unsupported[f"rope_scaling {kind!r}"] = kind not in ("default", "linear", "llama3") or (
        kind == "llama3" and any(scaling.get(k) != v for k, v in LLAMA3_ROPE.items()))  # Llama 3.1's values only
    for what, bad in unsupported.items():
        if bad:
            raise BigModelError(f"{where}: {model_type} with {what} is not supported yet")
    block = hf.get("max_position_embeddings", 2048)
    if hf.get("sliding_window") and hf.get("use_sliding_window", model_type in ("mistral", "phi3")):
        block = min(block, hf["sliding_window"])  # within one window, sliding attention is full attention
    theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return ModelConfig(vocab_size=hf["vocab_size"], block_size=block, n_layer=hf["num_hidden_layers"], n_head=heads,
                       n_kv_head=hf.get("num_key_value_heads") or heads, n_embd=hidden, bias=False,
                       qkv_bias=model_type == "qwen2", qk_norm=model_type == "qwen3", norm="rmsnorm",
                       norm_eps=hf.get("rms_norm_eps", 1e-6), positions="rope", rope_base=float(theta), mlp="swiglu",
                       rope_scaling="none" if kind == "default" else kind,
                       rope_factor=float(scaling.get("factor", 1.0)),
                       mlp_hidden=hf["intermediate_size"], tie_embeddings=hf.get("tie_word_embeddings", False))


def llama_model(config: ModelConfig, weights: dict[str, torch.Tensor], where: str | Path) -> Transformer:
    """A `Transformer` holding Llama-family weights named as `transformers` names them."""
    state = {"tok_emb.weight": weights["model.embed_tokens.weight"], "norm_f.weight": weights["model.norm.weight"],
             "lm_head.weight": weights.get("lm_head.weight", weights["model.embed_tokens.weight"])}
    parts = ("weight", "bias") if config.qkv_bias else ("weight",)
    for i in range(config.n_layer):
        theirs = f"model.layers.{i}."
        for part in parts:
            state[f"blocks.{i}.attn.qkv.{part}"] = torch.cat([weights[f"{theirs}self_attn.{p}.{part}"] for p in QKV])
        for ours, name in BLOCK_NAMES.items():
            if f"{theirs}{name}.weight" in weights:
                state[f"blocks.{i}.{ours}.weight"] = weights[f"{theirs}{name}.weight"]
    return load_state(Transformer.empty(config, "meta"), state, Path(where))


def llama_from_hf(folder: Path) -> Transformer:
    """Import a Llama-family `transformers` folder."""
    hf, weights = read_hf_config(folder), read_hf_weights(folder)
    config = llama_config(hf, folder)
    if hf.get("model_type") == "phi3":
        weights = phi3_as_llama(weights, config)
    return llama_model(config, weights, folder)


def phi3_as_llama(weights: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Phi-3's fused projections under Llama's names: `qkv_proj` holds the queries', keys' and values'
    rows in turn, `gate_up_proj` the gate's then the up projection's."""
    kv = config.n_kv_head * config.head_dim
    out = {}
    for name, w in weights.items():
        if name.endswith("self_attn.qkv_proj.weight"):
            for part, rows in zip(QKV, w.split((config.n_embd, kv, kv)), strict=True):
                out[name.replace("qkv_proj", part)] = rows
        elif name.endswith("mlp.gate_up_proj.weight"):
            out[name.replace("gate_up_proj", "gate_proj")], out[name.replace("gate_up_proj", "up_proj")] = w.chunk(2)
        else:
            out[name] = w
    return out


def llama_state(model: Transformer) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights under `transformers`' names and the `config.json` of the Llama-family model `model` is:
    Llama, or Qwen2/Qwen3 where it needs their extras (query/key/value biases, query/key norms)."""
    cfg = model.config
    check_exportable(cfg, "Llama", {"positions": "rope", "norm": "rmsnorm", "bias": False, "n_kv_head": cfg.n_kv_head,
                                    "causal": True, "norm_first": True, "embed_norm": False, "type_vocab_size": 0,
                                    "encoder_layers": 0, "mlp": "swiglu", "mlp_hidden": cfg.mlp_hidden,
                                    "qkv_bias": cfg.qkv_bias, "qk_norm": cfg.qk_norm})
    sd = model.state_dict()
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["norm_f.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    kv = cfg.n_kv_head * cfg.head_dim
    for i in range(cfg.n_layer):
        theirs = f"model.layers.{i}."
        for part in ("weight", "bias") if cfg.qkv_bias else ("weight",):
            for name, chunk in zip(QKV, sd[f"blocks.{i}.attn.qkv.{part}"].split((cfg.n_embd, kv, kv)), strict=True):
                out[f"{theirs}self_attn.{name}.{part}"] = chunk
        for ours, name in BLOCK_NAMES.items():
            if f"blocks.{i}.{ours}.weight" in sd:
                out[f"{theirs}{name}.weight"] = sd[f"blocks.{i}.{ours}.weight"]
    model_type = "qwen2" if cfg.qkv_bias else "qwen3" if cfg.qk_norm else "llama"
    architecture = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[model_type]
    hidden = model.blocks[0].mlp.up.out_features
    config = {"architectures": [architecture], "model_type": model_type, "vocab_size": cfg.vocab_size,
              "hidden_size": cfg.n_embd, "intermediate_size": hidden, "num_hidden_layers": cfg.n_layer,
              "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
              "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_base,
              "hidden_act": "silu", "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False,
              "torch_dtype": "float32"}
    if cfg.rope_scaling != "none":
        config["rope_scaling"] = {"rope_type": cfg.rope_scaling, "factor": cfg.rope_factor,
                                  **(LLAMA3_ROPE if cfg.rope_scaling == "llama3" else {})}
    return out, config


def llama_to_hf(model: Transformer, folder: str | Path, tokenizer: Tokenizer | None = None) -> str:
    """Write a folder `LlamaForCausalLM` (Qwen2's or Qwen3's class where the model needs their extras) loads to
    the same logits; the class's name."""
    state, config = llama_state(model)
    write_hf_folder(folder, state, config, tokenizer)
    return config["architectures"][0]
