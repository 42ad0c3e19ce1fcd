"""GGUF files (llama.cpp's and Ollama's format) in: a Llama-family model's weights, dequantized to fp32
by the `gguf` package; its byte-level BPE tokenizer rebuilt for `tokenizers` from the vocabulary,
merges, special tokens and pre-tokenizer the file names; and its chat template. And out again:
`write_gguf` writes the same pieces with the `gguf` package's writer, in f32, f16 or q8_0.

llama.cpp's converter reorders the rows of a Llama model's query and key projections (its rotary
code pairs neighbouring dimensions, ours and Hugging Face's pair the two halves); `unpermute` puts
them back. Qwen2 and Qwen3 files are written without that reordering.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

from bigmodel import disk
from bigmodel.errors import BigModelError, require
from bigmodel.model.llama import llama_config, llama_model, llama_state
from bigmodel.model.transformer import LLAMA3_ROPE, Transformer, llama3_frequencies, rope_frequencies

ARCHITECTURES = ("llama", "qwen2", "qwen3")  # GGUF's general.architecture, which is also transformers' model_type
NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
BLOCK_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
               "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
GGUF_BLOCK_NAMES = {theirs: ours for ours, theirs in BLOCK_NAMES.items()}
# How each pre-tokenizer llama.cpp names splits text before byte-level BPE.
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_SPLITS = {
    "llama-bpe": _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}" + _REST,
    "qwen2": _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}" + _REST,
}


def is_gguf(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".gguf"


class GGUFFile:
    """One GGUF file's metadata and tensors; every error names the file."""

    def __init__(self, path: str | Path) -> None:
        require("gguf", "gguf", "reading GGUF files")
        from gguf import GGUFReader

        self.path = Path(path)
        if not self.path.is_file():
            raise BigModelError(f"{path}: no such GGUF file")
        try:
            self.reader = GGUFReader(self.path)
        except (ValueError, IndexError, KeyError, OSError) as e:
            raise BigModelError(f"{path}: not a readable GGUF file, or a truncated one ({e})") from None
        self.architecture = self.get("general.architecture")
        if self.architecture not in ARCHITECTURES:
            raise BigModelError(f"{path}: GGUF architecture {self.architecture!r} is not supported "
                                f"(supported: {', '.join(ARCHITECTURES)})")

    def get(self, key: str, default: Any = ...) -> Any:
        field = self.reader.fields.get(key)
        if field is None:
            if default is ...:
                raise BigModelError(f"{self.path}: the GGUF metadata lack {key}")
            return default
        return field.contents()

    def hf_config(self) -> dict[str, Any]:
        """The metadata as a `transformers` config.json would say them."""
        a = self.architecture + "."
        names = {t.name for t in self.reader.tensors}
        keys = {"hidden_size": "embedding_length", "intermediate_size": "feed_forward_length",
                "num_hidden_layers": "block_count", "num_attention_heads": "attention.head_count"}
        return {"model_type": self.architecture, "vocab_size": len(self.reader.fields["tokenizer.ggml.tokens"].data),
                **{ours: self.get(a + theirs) for ours, theirs in keys.items()},
                "num_key_value_heads": self.get(a + "attention.head_count_kv", None),
                "max_position_embeddings": self.get(a + "context_length", 2048),
                "rope_theta": self.get(a + "rope.freq_base", 10000.0),
                "rms_norm_eps": self.get(a + "attention.layer_norm_rms_epsilon", 1e-6),
                "tie_word_embeddings": "output.weight" not in names,
                "rope_scaling": self.rope_freqs_scaling() if "rope_freqs.weight" in names else
                {"rope_type": self.get(a + "rope.scaling.type", "default").replace("none", "default"),
                 "factor": self.get(a + "rope.scaling.factor", 1.0)}}

    def rope_freqs_scaling(self) -> dict[str, Any]:
        """llama.cpp keeps Llama 3.1's scaling as a tensor of per-frequency divisors (`rope_freqs`); the
        `rope_scaling` that gives the same divisors (its largest is the factor), or one that says it is not."""
        a = self.architecture + "."
        divisors = next(np.asarray(t.data, dtype=np.float64) for t in self.reader.tensors
                        if t.name == "rope_freqs.weight")
        inv_freq = rope_frequencies(self.get(a + "rope.freq_base", 10000.0), 2 * divisors.size)
        factor = float(divisors.max())
        expected = (inv_freq / llama3_frequencies(inv_freq, factor)).numpy()
        if not np.allclose(divisors, expected, rtol=1e-3):
            return {"rope_type": "rope_freqs other than llama3's"}
        return {"rope_type": "llama3", "factor": factor, **LLAMA3_ROPE}

    def hf_weights(self, n_head: int, n_kv_head: int) -> dict[str, torch.Tensor]:
        """Every tensor dequantized to fp32, under `transformers`' names."""
        from gguf import dequantize

        weights = {}
        for t in self.reader.tensors:
            if t.name == "rope_freqs.weight":  # frequencies, read by `hf_config`
                continue
            try:
                array = dequantize(t.data, t.tensor_type)
            except NotImplementedError:
                raise BigModelError(f"{self.path}: tensor {t.name} is {t.tensor_type.name}, which the gguf package "
                                    "cannot dequantize") from None
            name = hf_name(t.name)
            if self.architecture == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
                array = unpermute(array, n_head)
            elif self.architecture == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
                array = unpermute(array, n_kv_head)
            if array.dtype != np.float32 or not array.flags.writeable:  # F32 tensors are views of the mapped file
                array = np.array(array, dtype=np.float32)
            weights[name] = torch.from_numpy(array)
        return weights

    def model(self) -> Transformer:
        config = llama_config(self.hf_config(), self.path)
        return llama_model(config, self.hf_weights(config.n_head, config.n_kv_head), self.path)

    def tokenizer(self) -> Tokenizer:
        """The file's byte-level BPE vocabulary as a `tokenizers` tokenizer that splits text as llama.cpp does."""
        from gguf import TokenType

        kind = self.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise BigModelError(f"{self.path}: tokenizer {kind!r} is not supported yet (byte-level BPE only)")
        tokens = self.get("tokenizer.ggml.tokens")
        merges = [tuple(m.split(" ", 1)) for m in self.get("tokenizer.ggml.merges")]
        tok = Tokenizer(BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
        pre = self.get("tokenizer.ggml.pre", "default")
        tok.pre_tokenizer = pre_tokenizer(pre, self.path)
        tok.decoder = decoders.ByteLevel()
        types = self.get("tokenizer.ggml.token_type", [TokenType.NORMAL] * len(tokens))
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, k in zip(tokens, types, strict=True) if k == TokenType.CONTROL])
        tok.add_tokens([AddedToken(t, normalized=False) for t, k in zip(tokens, types, strict=True)
                        if k == TokenType.USER_DEFINED])
        return tok

    def tokenizer_config(self) -> dict[str, Any]:
        """What `tokenizer_config.json` would hold: the chat template and the named special tokens."""
        tokens = self.get("tokenizer.ggml.tokens")
        config = {"chat_template": self.get("tokenizer.chat_template", None)}
        for name in ("bos", "eos", "unknown", "padding"):
            index = self.get(f"tokenizer.ggml.{name}_token_id", None)
            if index is not None:
                config[{"unknown": "unk", "padding": "pad"}.get(name, name) + "_token"] = tokens[index]
        return {k: v for k, v in config.items() if v is not None}


GGUFType = Literal["f32", "f16", "q8_0"]


def write_gguf(model: Transformer, tok: Tokenizer, tokenizer_config: dict, path: str | Path,
               kind: GGUFType = "f16") -> None:
    """Write a Llama-family model as a GGUF file llama.cpp, `transformers` and `GGUFFile` read: matrices in
    `kind` (q8_0 falls back to f16 for rows that are not whole 32-value blocks), vectors in f32.

    Written beside the target and renamed into place, so a failed write leaves no half file."""
    require("gguf", "gguf", "writing GGUF files")
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, quantize

    path = Path(path)
    state, hf = llama_state(model)
    cfg, arch = model.config, hf["model_type"]
    tmp = path.with_name(path.name + ".tmp")
    writer = GGUFWriter(str(tmp), arch)
    writer.add_name(path.stem)
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(hf["intermediate_size"])
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.n_kv_head)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_base)
    if cfg.rope_scaling == "linear":
        from gguf import RopeScalingType

        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(cfg.rope_factor)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_file_type({"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
                          "q8_0": LlamaFileType.MOSTLY_Q8_0}[kind])
    add_tokenizer(writer, tok, tokenizer_config, cfg.vocab_size, path)
    if cfg.rope_scaling == "llama3":  # as llama.cpp keeps it: the divisor of each frequency
        inv_freq = rope_frequencies(cfg.rope_base, cfg.head_dim)
        writer.add_tensor("rope_freqs.weight", (inv_freq / llama3_frequencies(inv_freq, cfg.rope_factor)).numpy())
    for name, tensor in state.items():
        array = tensor.detach().float().cpu().numpy()
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            array = permute(array, cfg.n_head if "q_proj" in name else cfg.n_kv_head)
        if array.ndim == 1 or kind == "f32":
            writer.add_tensor(gguf_name(name), array)
        elif kind == "q8_0" and array.shape[-1] % 32 == 0:
            writer.add_tensor(gguf_name(name), quantize(array, GGMLQuantizationType.Q8_0),
                              raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name(name), array.astype(np.float16))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    disk.replace(tmp, path)


def add_tokenizer(writer: Any, tok: Tokenizer, tokenizer_config: dict, vocab_size: int, path: Path) -> None:
    """The tokenizer as GGUF metadata: tokens (padded to the model's vocabulary), types, merges, pre-tokenizer,
    the named special tokens and the chat template."""
    from gguf import TokenType

    spec = json.loads(tok.to_str())
    if (spec.get("model") or {}).get("type") != "BPE" or not spec["model"].get("merges"):
        raise BigModelError(f"{path}: GGUF export needs a byte-level BPE tokenizer; this model's is "
                            f"{(spec.get('model') or {}).get('type')}")
    vocab = tok.get_vocab(with_added_tokens=True)
    if len(vocab) > vocab_size or sorted(vocab.values()) != list(range(len(vocab))):
        raise BigModelError(f"{path}: the tokenizer's ids do not run 0..{vocab_size - 1}")
    tokens = sorted(vocab, key=vocab.__getitem__) + [f"[PAD{i}]" for i in range(len(vocab), vocab_size)]
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_name(tok, path))
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.UNUSED if i >= len(vocab) else
                            (TokenType.CONTROL if added[t]["special"] else TokenType.USER_DEFINED) if t in added
                            else TokenType.NORMAL for i, t in enumerate(tokens)])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    named = {k: v.get("content") if isinstance(v, dict) else v for k, v in tokenizer_config.items()
             if k.endswith("_token")}
    named.setdefault("eos_token", "<|endoftext|>")
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("unk_token", writer.add_unk_token_id), ("pad_token", writer.add_pad_token_id)):
        if isinstance(named.get(key), str) and named[key] in vocab:
            add(vocab[named[key]])
    if isinstance(tokenizer_config.get("chat_template"), str):
        writer.add_chat_template(tokenizer_config["chat_template"])


def pre_name(tok: Tokenizer, path: Path) -> str:
    """The name llama.cpp gives the way `tok` splits text before BPE (the inverse of `pre_tokenizer`)."""
    mine = json.loads(tok.to_str())["pre_tokenizer"]
    for kind in ("gpt2", "smollm", *_SPLITS):
        probe = Tokenizer(BPE())
        probe.pre_tokenizer = pre_tokenizer(kind, path)
        if json.loads(probe.to_str())["pre_tokenizer"] == mine:
            return kind
    raise BigModelError(f"{path}: the tokenizer splits text in a way no GGUF pre-tokenizer name says "
                        f"(known: gpt2, smollm, {', '.join(_SPLITS)})")


def gguf_name(name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight` (the inverse of `hf_name`)."""
    for theirs, ours in NAMES.items():
        if name.startswith(ours + "."):
            return theirs + name[len(ours):]
    _, _, i, rest = name.split(".", 3)
    module, part = rest.rsplit(".", 1)
    return f"blk.{i}.{GGUF_BLOCK_NAMES[module]}.{part}"


def hf_name(name: str) -> str:
    """`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`."""
    parts = name.split(".")
    if parts[0] == "blk" and parts[2] in BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}.{parts[3]}"
    if parts[0] in NAMES:
        return f"{NAMES[parts[0]]}.{parts[1]}"
    return name


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order for rotary projections: within each head, the two halves interleaved as pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's row order for rotary projections: within each head, pairs back to halves."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def pre_tokenizer(kind: str, path: Path) -> pre_tokenizers.PreTokenizer:
    if kind in ("default", "gpt2", "gpt-2"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    if kind == "smollm":  # GPT-2's split, each digit on its own
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    split = _SPLITS.get({"llama3": "llama-bpe", "llama-v3": "llama-bpe", "deepseek-r1-qwen": "qwen2"}.get(kind, kind))
    if split is None:
        raise BigModelError(f"{path}: pre-tokenizer {kind!r} is not supported yet "
                            f"(supported: default, gpt2, smollm, {', '.join(_SPLITS)})")
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
