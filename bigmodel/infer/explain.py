"""Why a model decided: token attributions, attention maps and rollout, and how faithful they are.

- Integrated gradients (Captum's `LayerIntegratedGradients` on the token-embedding layer): each
  token's share of the target logit's difference from a baseline text whose real tokens are
  replaced by [PAD] (or [MASK]); special tokens stay. Captum reports the convergence delta: how far
  the shares' sum is from that difference. Decoders: the next token's log-probability instead.
- Occlusion (Captum's `FeatureAblation`, one token at a time): the cheap method to compare.
- LIME and kernel SHAP (Captum's `Lime`, `KernelShap`): each fits a linear model to the target score on
  random subsets of the tokens (the rest set to the baseline); LIME weighs subsets by closeness to the
  whole text, kernel SHAP by the Shapley kernel, so its weights estimate Shapley values.
- Attention: each layer's and head's probabilities, and attention rollout (Abnar & Zuidema,
  2020): the heads' mean plus the residual identity, multiplied through the layers.
- Faithfulness (ERASER, DeYoung et al. 2020): comprehensiveness is the drop in the predicted
  class's probability when the top-k% attributed tokens are deleted; sufficiency is the drop
  when only they are kept. Random k% deletion is the reference a useful method must beat.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from captum.attr import FeatureAblation, KernelShap, LayerIntegratedGradients, Lime
from tokenizers import Tokenizer

from bigmodel.data.collate import pad_id
from bigmodel.errors import BigModelError
from bigmodel.model.heads import SequenceModel
from bigmodel.model.transformer import Transformer

BASELINES = ("pad", "mask")
DEFAULT_METHODS = ("integrated_gradients", "occlusion")
METHODS = {"ig": "integrated_gradients", "occlusion": "occlusion", "lime": "lime", "shap": "kernel_shap"}


def method_names(spec: str) -> list[str]:
    """`--method ig,lime` (or `all`) as the attribution names the JSON and reports use."""
    short = list(METHODS) if spec.strip() == "all" else [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in short if m not in METHODS]
    if unknown or not short:
        raise BigModelError(f"--method takes {', '.join(METHODS)} (comma-separated) or all, not {spec!r}")
    return [METHODS[m] for m in dict.fromkeys(short)]


@dataclass
class Explanation:
    """What `bigmodel explain` reports for one text; `to_dict` is its JSON (one key per attribution method)."""

    text: str
    tokens: list[str]  # as the tokenizer split the text, special tokens included
    target: str  # the label (or next token) explained
    probabilities: dict[str, float]  # the model's, on the whole text (decoders: the five likeliest tokens)
    attributions: dict[str, list[float]]  # per method (METHODS' values), one value per token
    logit_difference: float  # target score on the text minus on the baseline
    convergence_delta: float | None  # integrated gradients' (Captum): their sum minus `logit_difference`
    attention: np.ndarray = field(repr=False)  # (layers, heads, T, T) probabilities
    rollout: np.ndarray = field(repr=False)  # (T, T): how much each position draws on each input token

    def to_dict(self) -> dict:
        values = {k: v for k, v in asdict(self).items() if k != "attributions"}
        values.update(self.attributions)
        values["attention"] = self.attention.round(4).tolist()
        values["rollout"] = self.rollout.round(4).tolist()
        return values


def attention_maps(model: Transformer, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Every layer's attention probabilities for one sequence: (layers, heads, T, T), read block by block
    as the forward pass goes (no hooks: a served model may be running other requests between two calls)."""
    maps: list[torch.Tensor] = []
    with torch.no_grad():
        x, rope = model.embed(ids)
        for block in model.blocks:
            maps.append(block.attn.weights(block.norm1(x) if block.norm_first else x, rope, mask)[0])
            x = block(x, rope, None, mask)
    return torch.stack(maps).float()


def attention_rollout(maps: torch.Tensor) -> torch.Tensor:
    """Abnar & Zuidema's rollout: per layer the heads' mean plus the identity (the residual stream),
    rows renormalised, multiplied from the first layer up."""
    identity = torch.eye(maps.size(-1), device=maps.device)
    rolled = identity
    for layer in maps:
        mixed = 0.5 * layer.mean(0) + 0.5 * identity
        rolled = (mixed / mixed.sum(-1, keepdim=True)) @ rolled
    return rolled


def baseline_ids(tok: Tokenizer, ids: list[int], kind: str) -> list[int]:
    """The text with every real token replaced by [PAD] (or [MASK]); special tokens ([CLS], [SEP]) stay."""
    if kind not in BASELINES:
        raise BigModelError(f"--baseline must be one of {', '.join(BASELINES)}, not {kind!r}")
    replacement = pad_id(tok)
    if kind == "mask":
        replacement = next((i for t in ("[MASK]", "<|mask|>", "<mask>") if (i := tok.token_to_id(t)) is not None),
                           None)
        if replacement is None:
            raise BigModelError("--baseline mask: this tokenizer has no mask token; use --baseline pad")
    special = special_ids(tok)
    return [i if i in special else replacement for i in ids]


def special_ids(tok: Tokenizer) -> set[int]:
    return {i for i, token in tok.get_added_tokens_decoder().items() if token.special}


def attribute(forward: Callable[..., torch.Tensor], embeddings: torch.nn.Module, ids: torch.Tensor,
              base: torch.Tensor, index: int, method: str, args: tuple = (), steps: int = 50, samples: int = 200,
              seed: int = 0) -> tuple[list[float], float | None]:
    """One method's attribution of `forward(ids, *args)[:, index]` to each token of `ids` (1, T), with
    `base` as the absent tokens; integrated gradients also return Captum's convergence delta."""
    if method == "integrated_gradients":
        lig = LayerIntegratedGradients(forward, embeddings)
        values, delta = lig.attribute(ids, baselines=base, additional_forward_args=args, target=index, n_steps=steps,
                                      internal_batch_size=steps, return_convergence_delta=True)
        return values.sum(-1)[0].float().tolist(), float(delta[0])
    if method == "occlusion":
        values = FeatureAblation(forward).attribute(ids, baselines=base, additional_forward_args=args, target=index)
        return values[0].float().tolist(), None
    if method == "lime":
        from captum._utils.models.linear_model import SkLearnRidge

        sampler: Lime | KernelShap = Lime(forward, interpretable_model=SkLearnRidge(alpha=1.0),
                                          similarity_func=closeness)
    elif method == "kernel_shap":
        sampler = KernelShap(forward)
    else:
        raise BigModelError(f"no attribution method {method!r}; there are {', '.join(METHODS.values())}")
    # the subsets they sample come from the global RNG: seeded here, and given back as it was found
    with torch.random.fork_rng(devices=[ids.device] if ids.device.type == "cuda" else []):
        torch.manual_seed(seed)
        values = sampler.attribute(ids, baselines=base, additional_forward_args=args, target=index,
                                   feature_mask=torch.arange(ids.size(1), device=ids.device)[None],
                                   n_samples=samples, perturbations_per_eval=min(samples, 64))
    return values[0].float().tolist(), None


def closeness(_: torch.Tensor, __: torch.Tensor, kept: torch.Tensor, **___: object) -> torch.Tensor:
    """LIME's weight of a token subset, as its text version has it: an exponential kernel (width 0.25)
    of the cosine distance between the kept-token indicator and the whole text's."""
    distance = 1 - kept.float().sum() / (kept.numel() ** 0.5 * kept.float().norm().clamp_min(1e-12))
    return torch.exp(-distance ** 2 / 0.25 ** 2)


def classifier_attributions(model: SequenceModel, tok: Tokenizer, ids: list[int], index: int, baseline: str,
                            method: str = "integrated_gradients", steps: int = 50, samples: int = 200
                            ) -> tuple[list[float], float | None]:
    """`method`'s attribution of output `index` to each token (and IG's convergence delta)."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    base = torch.tensor([baseline_ids(tok, ids, baseline)], device=device)
    mask = torch.ones_like(x, dtype=torch.bool)
    return attribute(lambda x, m: model(x, m).float(), model.backbone.tok_emb, x, base, index, method, (mask,),
                     steps, samples)


def explain_classifier(model: SequenceModel, tok: Tokenizer, text: str, target: str | None = None,
                       baseline: str = "pad", steps: int = 50, methods: tuple[str, ...] = DEFAULT_METHODS,
                       samples: int = 200) -> Explanation:
    """Attributions of a fine-tuned classifier's (or regressor's) score for `target` (default: the prediction)."""
    head = model.head_config
    ids_list = checked_ids(tok, text, model.config.block_size, special=True)
    device = next(model.parameters()).device
    ids = torch.tensor([ids_list], device=device)
    mask = torch.ones_like(ids, dtype=torch.bool)
    base = torch.tensor([baseline_ids(tok, ids_list, baseline)], device=device)
    model.eval()
    with torch.no_grad():
        scores = model(ids, mask)[0].float()
        base_scores = model(base, mask)[0].float()
    if head.task == "classify":
        probs = scores.softmax(-1)
        if target is not None and target not in head.labels:
            raise BigModelError(f"--target {target!r} is not a label of this model ({', '.join(head.labels)})")
        index = head.labels.index(target) if target is not None else int(probs.argmax())
        probabilities, name = dict(zip(head.labels, probs.tolist(), strict=True)), head.labels[index]
    else:
        index, probabilities, name = 0, {"value": float(scores[0])}, "value"
    attributions, delta = {}, None
    for method in methods:
        attributions[method], found = classifier_attributions(model, tok, ids_list, index, baseline, method, steps,
                                                              samples)
        delta = found if found is not None else delta
    maps = attention_maps(model.backbone, ids, mask)
    return Explanation(text, token_strings(tok, ids_list), name, probabilities, attributions,
                       float(scores[index] - base_scores[index]), delta, maps.cpu().numpy(),
                       attention_rollout(maps).cpu().numpy())


def explain_next_token(model: Transformer, tok: Tokenizer, prompt: str, baseline: str = "pad", steps: int = 50,
                       methods: tuple[str, ...] = DEFAULT_METHODS, samples: int = 200) -> Explanation:
    """Attributions of a decoder's log-probability of its most likely next token to the prompt's tokens."""
    ids_list = checked_ids(tok, prompt, model.config.block_size, special=False)
    device = next(model.parameters()).device
    ids = torch.tensor([ids_list], device=device)
    base = torch.tensor([baseline_ids(tok, ids_list, baseline)], device=device)

    def next_log_probs(x: torch.Tensor) -> torch.Tensor:
        return model(x, last_only=True)[0][:, -1].float().log_softmax(-1)

    model.eval()
    with torch.no_grad():
        log_probs, base_log_probs = next_log_probs(ids)[0], next_log_probs(base)[0]
    index = int(log_probs.argmax())
    top = log_probs.exp().topk(min(5, log_probs.numel()))
    probabilities = {tok.decode([int(i)]): float(p) for p, i in zip(top.values, top.indices, strict=True)}
    attributions, delta = {}, None
    for method in methods:
        attributions[method], found = attribute(next_log_probs, model.tok_emb, ids, base, index, method, (), steps,
                                                samples)
        delta = found if found is not None else delta
    maps = attention_maps(model, ids)
    return Explanation(prompt, token_strings(tok, ids_list), tok.decode([index]), probabilities, attributions,
                       float(log_probs[index] - base_log_probs[index]), delta, maps.cpu().numpy(),
                       attention_rollout(maps).cpu().numpy())


def checked_ids(tok: Tokenizer, text: str, block_size: int, special: bool) -> list[int]:
    ids = tok.encode(text, add_special_tokens=special).ids
    if not ids:
        raise BigModelError("the text has no tokens to explain")
    if len(ids) > block_size:
        raise BigModelError(f"the text is {len(ids)} tokens; the model's context holds {block_size}")
    return ids


def token_strings(tok: Tokenizer, ids: list[int]) -> list[str]:
    """Each token as readable text: byte-level pieces decoded, WordPiece's ## kept."""
    return [tok.id_to_token(i) if i in special_ids(tok) else (tok.decode([i]) or tok.id_to_token(i)) for i in ids]


def faithfulness(model: SequenceModel, tok: Tokenizer, texts: list[str], ks: tuple[int, ...] = (10, 20, 50),
                 baseline: str = "pad", steps: int = 20, seed: int = 0,
                 methods: tuple[str, ...] = ("integrated_gradients",), samples: int = 200
                 ) -> dict[str, dict[str, float]]:
    """ERASER's comprehensiveness and sufficiency, averaged over `texts`, for each method's top-k% tokens
    and for k% random tokens (the reference): the predicted class's probability on the whole text minus on
    the text without those tokens (comprehensiveness: higher means they mattered) or with only them
    (sufficiency: lower means they suffice). Special tokens always stay. Each method's seconds per text too."""
    import time

    from tqdm import tqdm

    from bigmodel.data.inputs import TextInputs
    from bigmodel.infer.classify import predict_scores

    head = model.head_config
    if head.task != "classify":
        raise BigModelError("faithfulness is measured on classifiers; this checkpoint regresses")
    rng = random.Random(seed)
    pad, special = pad_id(tok), special_ids(tok)
    inputs = TextInputs(tok, model.config.block_size)
    totals: dict[tuple[str, str], float] = {}
    counted = 0
    for text in tqdm(texts, desc="faithfulness", unit=" texts", mininterval=1.0):
        ids = checked_ids(tok, text, model.config.block_size, special=True)
        real = [i for i, t in enumerate(ids) if t not in special]
        if not real:
            continue
        whole = predict_scores(model, [ids], inputs, head.n_outputs)[0].softmax(-1)
        index = int(whole.argmax())
        rankings = {}
        for method in methods:
            start = time.perf_counter()
            values, _ = classifier_attributions(model, tok, ids, index, baseline, method, steps, samples)
            totals[method, "seconds"] = totals.get((method, "seconds"), 0.0) + time.perf_counter() - start
            rankings[method] = sorted(real, key=lambda i, v=values: -v[i])
        variants = []
        for k in ks:
            n = max(1, round(len(real) * k / 100))
            chosen_by = {method: set(ranked[:n]) for method, ranked in rankings.items()}
            for method, chosen in (*chosen_by.items(), ("random", set(rng.sample(real, n)))):
                without = [t for i, t in enumerate(ids) if i not in chosen] or [pad]
                only = [t for i, t in enumerate(ids) if i in chosen or i not in real]
                variants.append((method, k, without, only))
        probs = predict_scores(model, [v[2] for v in variants] + [v[3] for v in variants], inputs,
                               head.n_outputs).softmax(-1)[:, index]
        for j, (method, k, _, _) in enumerate(variants):
            for measure, p in (("comprehensiveness", probs[j]), ("sufficiency", probs[len(variants) + j])):
                key = (method, f"{measure}@{k}")
                totals[key] = totals.get(key, 0.0) + float(whole[index] - p)
        counted += 1
    if not counted:
        raise BigModelError("no text with tokens to measure faithfulness on")
    report: dict[str, dict[str, float]] = {}
    for (method, measure), total in totals.items():
        report.setdefault(method, {})[measure] = total / counted
    report["texts"] = {"count": counted}
    return report
