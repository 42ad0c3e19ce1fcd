"""Hugging Face interop: read and write the `config.json` + `model.safetensors` +
`tokenizer.json` folder that `transformers` loads with `from_pretrained`.

GPT-2-family decoders map one to one onto a pre-norm causal `Transformer` (GPT-2's Conv1D
layers store weights as (in, out), ours as (out, in), hence the transposes); BERT-family
encoders onto a post-norm bidirectional one with token types, their separate query, key
and value projections joined into our single `qkv`. BERT's pooler and MLM head, which
sentence embeddings do not use, are not imported. Encoder-decoders export as BART (post-norm,
learned positions that BART offsets by two, one embedding shared by both sides).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import BertWordPieceTokenizer, Tokenizer, decoders
from tokenizers.models import BPE
from tokenizers.pre_tokenizers import ByteLevel

from bigmodel.config import ModelConfig
from bigmodel.data.tokenizer import EOT, load_tokenizer
from bigmodel.errors import BigModelError
from bigmodel.model.transformer import Transformer

# ours → GPT-2's, inside block i; Conv1D weights are transposed, LayerNorm ones are not
GPT2_BLOCK_NAMES = {"norm1": "ln_1", "norm2": "ln_2", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
                    "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj"}
BERT_BLOCK_NAMES = {"norm1": "attention.output.LayerNorm", "attn.proj": "attention.output.dense",
                    "mlp.up": "intermediate.dense", "mlp.down": "output.dense", "norm2": "output.LayerNorm"}
GPT2_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                    "gelu_fast": "gelu_tanh"}


def read_hf_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise BigModelError(f"{folder}: no config.json; not a Hugging Face model folder")
    return json.loads(path.read_text(encoding="utf-8"))


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """`model.safetensors` (or the shards its index lists), else `pytorch_model.bin` loaded with `weights_only=True`."""
    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return {name: t for shard in shards for name, t in load_file(str(folder / shard)).items()}
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise BigModelError(f"{folder}: neither model.safetensors nor pytorch_model.bin")


def read_hf_tokenizer(folder: Path) -> Tokenizer:
    """`tokenizer.json`, else BERT's `vocab.txt` (WordPiece), else GPT-2's `vocab.json` + `merges.txt`."""
    if (folder / "tokenizer.json").is_file():
        return load_tokenizer(folder)
    if (folder / "vocab.txt").is_file():
        lowercase = json.loads((folder / "tokenizer_config.json").read_text()).get("do_lower_case", True) \
            if (folder / "tokenizer_config.json").is_file() else True
        wordpiece = BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=lowercase)
        return Tokenizer.from_str(wordpiece.to_str())
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        tok = Tokenizer(BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
        tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok
    raise BigModelError(f"{folder}: no tokenizer.json (nor vocab.json + merges.txt)")


def gpt2_config(hf: dict) -> ModelConfig:
    activation = hf.get("activation_function", "gelu_new")
    if activation not in GPT2_ACTIVATIONS:
        raise BigModelError(f"config.json: activation_function {activation!r} is not supported")
    return ModelConfig(vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", 1024), n_layer=hf["n_layer"],
                       n_head=hf["n_head"], n_embd=hf["n_embd"], norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                       mlp=GPT2_ACTIVATIONS[activation], bias=True, positions="learned",
                       tie_embeddings=hf.get("tie_word_embeddings", True))


def load_state(model: Transformer, state: dict[str, torch.Tensor], folder: Path) -> Transformer:
    """`state` into `model`; a model on the meta device takes the tensors themselves (no second copy)."""
    on_meta = next(model.parameters()).is_meta
    missing, unexpected = model.load_state_dict(state, strict=False, assign=on_meta)
    if missing or unexpected:
        raise BigModelError(f"{folder}: weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if on_meta and model.config.tie_embeddings:  # assigning gave each name its own parameter
        model.lm_head.weight = model.tok_emb.weight
    return model.eval()


def gpt2_from_hf(folder: Path) -> Transformer:
    """A `Transformer` holding the weights of a GPT-2-family `transformers` checkpoint."""
    model = Transformer(gpt2_config(read_hf_config(folder)))
    weights = {k.removeprefix("transformer."): v for k, v in read_hf_weights(folder).items()}
    state = {"tok_emb.weight": weights["wte.weight"], "pos_emb.weight": weights["wpe.weight"],
             "norm_f.weight": weights["ln_f.weight"], "norm_f.bias": weights["ln_f.bias"]}
    for i in range(model.config.n_layer):
        for ours, theirs in GPT2_BLOCK_NAMES.items():
            w = weights[f"h.{i}.{theirs}.weight"]
            state[f"blocks.{i}.{ours}.weight"] = w if ours.startswith("norm") else w.t()
            state[f"blocks.{i}.{ours}.bias"] = weights[f"h.{i}.{theirs}.bias"]
    state["lm_head.weight"] = weights.get("lm_head.weight", weights["wte.weight"])
    return load_state(model, state, folder)


def bert_config(hf: dict) -> ModelConfig:
    activation = hf.get("hidden_act", "gelu")
    if activation not in GPT2_ACTIVATIONS or hf.get("position_embedding_type", "absolute") != "absolute":
        raise BigModelError("config.json: only absolute positions and GELU activations are supported")
    if hf["intermediate_size"] != 4 * hf["hidden_size"]:
        raise BigModelError("config.json: intermediate_size must be 4 × hidden_size")
    return ModelConfig(vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
                       n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], n_embd=hf["hidden_size"],
                       norm_eps=hf.get("layer_norm_eps", 1e-12), mlp=GPT2_ACTIVATIONS[activation], bias=True,
                       positions="learned", causal=False, norm_first=False,
                       type_vocab_size=hf.get("type_vocab_size", 2), embed_norm=True)


def bert_from_hf(folder: Path) -> Transformer:
    """A bidirectional post-norm `Transformer` holding a BERT-family encoder's weights."""
    model = Transformer(bert_config(read_hf_config(folder)))
    weights = {k.removeprefix("bert."): v for k, v in read_hf_weights(folder).items()}
    state = {"tok_emb.weight": weights["embeddings.word_embeddings.weight"],
             "pos_emb.weight": weights["embeddings.position_embeddings.weight"],
             "type_emb.weight": weights["embeddings.token_type_embeddings.weight"],
             "embed_norm.weight": weights["embeddings.LayerNorm.weight"],
             "embed_norm.bias": weights["embeddings.LayerNorm.bias"]}
    for i in range(model.config.n_layer):
        prefix = f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            state[f"blocks.{i}.attn.qkv.{part}"] = torch.cat(
                [weights[f"{prefix}attention.self.{name}.{part}"] for name in ("query", "key", "value")])
            for ours, theirs in BERT_BLOCK_NAMES.items():
                state[f"blocks.{i}.{ours}.{part}"] = weights[f"{prefix}{theirs}.{part}"]
    state["lm_head.weight"] = state["tok_emb.weight"]
    return load_state(model, state, folder)


def check_exportable(cfg: ModelConfig, family: str, needs: dict[str, object]) -> None:
    """Refuse, with the reason, a model the target format cannot express."""
    needs = {"positions": "learned", "norm": "layernorm", "bias": True, "n_kv_head": cfg.n_head, "qkv_bias": False,
             "qk_norm": False, "mlp_hidden": 0, **needs}
    for field, needed in needs.items():
        if getattr(cfg, field) != needed:
            raise BigModelError(f"{family} format needs {field}={needed}, this model has {getattr(cfg, field)}")
    if "mlp" not in needs and cfg.mlp == "swiglu":
        raise BigModelError(f"{family} format needs a GELU MLP, this model has swiglu (export it as Llama)")


def write_hf_folder(folder: str | Path, weights: dict[str, torch.Tensor], config: dict,
                    tokenizer: Tokenizer | None) -> None:
    """config.json, model.safetensors and tokenizer.json; a tensor written under two names (BART's
    encoder and decoder share ours) is stored twice, as safetensors holds no aliases."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seen: set[int] = set()
    stored = {}
    for name, tensor in weights.items():
        tensor = tensor.contiguous()
        stored[name] = tensor.clone() if tensor.data_ptr() in seen else tensor
        seen.add(tensor.data_ptr())
    save_file(stored, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer is not None:
        tokenizer.save(str(folder / "tokenizer.json"))


BART_ATTENTION = {"q_proj": slice(0, 1), "k_proj": slice(1, 2), "v_proj": slice(2, 3)}
BART_BLOCK_NAMES = {"attn.proj": "self_attn.out_proj", "norm1": "self_attn_layer_norm", "mlp.up": "fc1",
                    "mlp.down": "fc2", "norm2": "final_layer_norm", "cross.q": "encoder_attn.q_proj",
                    "cross.proj": "encoder_attn.out_proj", "norm_cross": "encoder_attn_layer_norm"}


def bart_layer_to_hf(sd: dict[str, torch.Tensor], out: dict[str, torch.Tensor], side: str, ours: str, i: int,
                     key_bias: bool = True) -> None:
    """Layer i of the encoder or decoder under BART's names (Whisper's are the same): our fused `qkv` and
    cross-attention `kv` split into q, k, v; `key_bias=False` leaves out the keys' biases (Whisper has none)."""
    theirs = f"model.{side}.layers.{i}."
    for part in ("weight", "bias"):
        for name, chunk in zip(("q_proj", "k_proj", "v_proj"), sd[f"{ours}attn.qkv.{part}"].chunk(3), strict=True):
            if key_bias or (name, part) != ("k_proj", "bias"):
                out[f"{theirs}self_attn.{name}.{part}"] = chunk
        for mine, bart in BART_BLOCK_NAMES.items():
            if f"{ours}{mine}.{part}" in sd:  # the encoder's blocks have no cross-attention
                out[f"{theirs}{bart}.{part}"] = sd[f"{ours}{mine}.{part}"]
        if side == "decoder":
            k, v = sd[f"{ours}cross.kv.{part}"].chunk(2)
            if key_bias or part == "weight":
                out[f"{theirs}encoder_attn.k_proj.{part}"] = k
            out[f"{theirs}encoder_attn.v_proj.{part}"] = v


def bart_layer_from_hf(hf: dict[str, torch.Tensor], side: str, ours: str, i: int) -> dict[str, torch.Tensor]:
    """The mirror of `bart_layer_to_hf`: layer i of an encoder or decoder under our names, q, k and v fused;
    a key bias the folder leaves out (Whisper's) is zeros."""
    theirs, out = f"model.{side}.layers.{i}.", {}

    def bias(name: str) -> torch.Tensor:
        found = hf.get(f"{theirs}{name}.bias")
        return found if found is not None else torch.zeros(len(hf[f"{theirs}{name}.weight"]))

    out[f"{ours}attn.qkv.weight"] = torch.cat([hf[f"{theirs}self_attn.{n}_proj.weight"] for n in "qkv"])
    out[f"{ours}attn.qkv.bias"] = torch.cat([bias(f"self_attn.{n}_proj") for n in "qkv"])
    for mine, bart in BART_BLOCK_NAMES.items():
        for part in ("weight", "bias"):
            if f"{theirs}{bart}.{part}" in hf:
                out[f"{ours}{mine}.{part}"] = hf[f"{theirs}{bart}.{part}"]
    if side == "decoder":
        out[f"{ours}cross.kv.weight"] = torch.cat([hf[f"{theirs}encoder_attn.{n}_proj.weight"] for n in "kv"])
        out[f"{ours}cross.kv.bias"] = torch.cat([bias(f"encoder_attn.{n}_proj") for n in "kv"])
    return out


def bart_to_hf(model: Transformer, folder: str | Path, tokenizer: Tokenizer | None = None) -> None:
    """Write a folder `BartForConditionalGeneration.from_pretrained` loads to the same logits."""
    cfg = model.config
    check_exportable(cfg, "BART", {"norm_first": False, "embed_norm": True, "type_vocab_size": 0,
                                   "share_embeddings": True, "tie_embeddings": True, "norm_eps": 1e-5})
    sd = model.state_dict()
    positions = torch.cat([torch.zeros(2, cfg.n_embd), sd["pos_emb.weight"]])  # BART looks up position + 2
    out = {"model.shared.weight": sd["tok_emb.weight"], "final_logits_bias": torch.zeros(1, cfg.vocab_size)}
    for side, blocks in (("encoder", "encoder"), ("decoder", "blocks")):
        out[f"model.{side}.embed_positions.weight"] = positions
        for part in ("weight", "bias"):
            out[f"model.{side}.layernorm_embedding.{part}"] = sd[f"embed_norm.{part}"]
        for i in range(cfg.encoder_layers if side == "encoder" else cfg.n_layer):
            bart_layer_to_hf(sd, out, side, f"{blocks}.{i}.", i)
    eot = tokenizer.token_to_id(EOT) if tokenizer is not None else None
    config = {"architectures": ["BartForConditionalGeneration"], "model_type": "bart", "vocab_size": cfg.vocab_size,
              "d_model": cfg.n_embd, "encoder_layers": cfg.encoder_layers, "decoder_layers": cfg.n_layer,
              "encoder_attention_heads": cfg.n_head, "decoder_attention_heads": cfg.n_head,
              "encoder_ffn_dim": 4 * cfg.n_embd, "decoder_ffn_dim": 4 * cfg.n_embd,
              "activation_function": "gelu_new" if cfg.mlp == "gelu_tanh" else "gelu",
              "max_position_embeddings": cfg.block_size, "scale_embedding": False, "dropout": cfg.dropout,
              "attention_dropout": cfg.dropout, "activation_dropout": 0.0, "tie_word_embeddings": True,
              "bos_token_id": eot, "eos_token_id": eot, "decoder_start_token_id": eot, "forced_eos_token_id": None,
              "pad_token_id": tokenizer.token_to_id("<|pad|>") if tokenizer is not None else None}
    write_hf_folder(folder, out, config, tokenizer)


def bert_to_hf(model: Transformer, folder: str | Path, tokenizer: Tokenizer | None = None) -> None:
    """Write a folder `BertModel.from_pretrained` loads to the same hidden states."""
    cfg = model.config
    check_exportable(cfg, "BERT", {"causal": False, "norm_first": False, "embed_norm": True})
    if not cfg.type_vocab_size:
        raise BigModelError("BERT format needs token-type embeddings (type_vocab_size > 0)")
    sd = model.state_dict()
    out = {"embeddings.word_embeddings.weight": sd["tok_emb.weight"],
           "embeddings.position_embeddings.weight": sd["pos_emb.weight"],
           "embeddings.token_type_embeddings.weight": sd["type_emb.weight"],
           "embeddings.LayerNorm.weight": sd["embed_norm.weight"], "embeddings.LayerNorm.bias": sd["embed_norm.bias"]}
    for i in range(cfg.n_layer):
        prefix = f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            for name, chunk in zip(("query", "key", "value"), sd[f"blocks.{i}.attn.qkv.{part}"].chunk(3), strict=True):
                out[f"{prefix}attention.self.{name}.{part}"] = chunk
            for ours, theirs in BERT_BLOCK_NAMES.items():
                out[f"{prefix}{theirs}.{part}"] = sd[f"blocks.{i}.{ours}.{part}"]
    config = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": cfg.vocab_size,
              "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
              "intermediate_size": 4 * cfg.n_embd, "hidden_act": "gelu_new" if cfg.mlp == "gelu_tanh" else "gelu",
              "max_position_embeddings": cfg.block_size, "type_vocab_size": cfg.type_vocab_size,
              "layer_norm_eps": cfg.norm_eps, "hidden_dropout_prob": cfg.dropout,
              "attention_probs_dropout_prob": cfg.dropout, "position_embedding_type": "absolute"}
    write_hf_folder(folder, out, config, tokenizer)


def gpt2_to_hf(model: Transformer, folder: str | Path, tokenizer: Tokenizer | None = None) -> None:
    """Write a folder `GPT2LMHeadModel.from_pretrained` loads to the same logits."""
    cfg = model.config
    check_exportable(cfg, "GPT-2", {"causal": True, "norm_first": True, "embed_norm": False, "type_vocab_size": 0})
    sd = model.state_dict()
    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"],
           "transformer.ln_f.weight": sd["norm_f.weight"], "transformer.ln_f.bias": sd["norm_f.bias"]}
    for i in range(cfg.n_layer):
        for ours, theirs in GPT2_BLOCK_NAMES.items():
            w = sd[f"blocks.{i}.{ours}.weight"]
            out[f"transformer.h.{i}.{theirs}.weight"] = w if ours.startswith("norm") else w.t()
            out[f"transformer.h.{i}.{theirs}.bias"] = sd[f"blocks.{i}.{ours}.bias"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
              "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
              "n_head": cfg.n_head, "layer_norm_epsilon": cfg.norm_eps,
              "activation_function": "gelu_new" if cfg.mlp == "gelu_tanh" else "gelu",
              "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
              "tie_word_embeddings": cfg.tie_embeddings}
    eot = tokenizer.token_to_id(EOT) if tokenizer is not None else None
    config["bos_token_id"] = config["eos_token_id"] = eot
    write_hf_folder(folder, out, config, tokenizer)
