"""Why a ViT decided: attention rollout from [CLS] to each patch, drawn over the image, and a
deletion check of how much the rolled-out patches matter.

Rollout (the same `attention_rollout` as for text) gives how much [CLS], which the head reads,
draws on each input patch through all layers. The deletion check blanks the top-k% patches by
rollout, or as many random ones, and reports the drop of the predicted class's probability:
if rollout points at what the model uses, its drop is the larger. Random patches are drawn from
those that are not already black, so blanking them changes the image as blanking rollout's does.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from bigmodel.data.inputs import ImageInputs
from bigmodel.infer.explain import attention_maps, attention_rollout
from bigmodel.model.heads import SequenceModel


def patch_rollout(model: SequenceModel, image: torch.Tensor) -> torch.Tensor:
    """(grid, grid): the rollout of [CLS] over the patches of one (C, H, W) image, summing to at most 1."""
    device = next(model.parameters()).device
    rolled = attention_rollout(attention_maps(model.backbone, image[None].to(device)).cpu())
    grid = model.config.image_size // model.config.patch_size
    return rolled[0, 1:].reshape(grid, grid)


@torch.no_grad()
def probabilities(model: SequenceModel, images: torch.Tensor) -> torch.Tensor:
    x, mask = ImageInputs(model.config).batch(list(images), next(model.parameters()).device)
    return model(x, mask).softmax(-1).cpu()


def blank_patches(image: torch.Tensor, patches: list[int], patch_size: int) -> torch.Tensor:
    """A copy with the listed patches (row-major) set to black."""
    out = image.clone()
    grid = image.size(-1) // patch_size
    for p in patches:
        r, c = divmod(p, grid)
        out[:, r * patch_size:(r + 1) * patch_size, c * patch_size:(c + 1) * patch_size] = 0
    return out


def deletion_check(model: SequenceModel, images: list[torch.Tensor], ks: tuple[int, ...] = (10, 25, 50),
                   seed: int = 0) -> dict[str, float]:
    """Mean drop of the predicted class's probability with the top-k% rollout patches blanked, and with
    as many random non-black patches blanked (all patches if too few are)."""
    rng = random.Random(seed)
    size = model.config.patch_size
    totals: dict[str, float] = {}
    for image in images:
        whole = probabilities(model, image[None])[0]
        label = int(whole.argmax())
        order = patch_rollout(model, image).flatten().argsort(descending=True).tolist()
        lit = [p for p in order if blank_patches(image, [p], size).ne(image).any()]
        variants, names = [], []
        for k in ks:
            n = max(1, round(len(order) * k / 100))
            pool = lit if len(lit) >= n else order
            variants += [blank_patches(image, order[:n], size), blank_patches(image, rng.sample(pool, n), size)]
            names += [f"rollout@{k}", f"random@{k}"]
        drops = whole[label] - probabilities(model, torch.stack(variants))[:, label]
        for name, drop in zip(names, drops.tolist(), strict=True):
            totals[name] = totals.get(name, 0.0) + drop
    return {name: total / len(images) for name, total in totals.items()}


def rollout_figure(image: torch.Tensor, rollout: torch.Tensor, title: str, path: Path) -> Path:
    """The image, the rollout per patch, and the two overlaid, side by side as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pixels = image.permute(1, 2, 0).squeeze(-1).numpy()
    cmap = "gray" if image.size(0) == 1 else None
    extent = (0, image.size(-1), image.size(-2), 0)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    axes[0].imshow(pixels, cmap=cmap, extent=extent)
    axes[0].set_title("input")
    shown = axes[1].imshow(rollout.numpy(), cmap="inferno", extent=extent)
    axes[1].set_title("rollout from [CLS]")
    fig.colorbar(shown, ax=axes[1], fraction=0.046)
    axes[2].imshow(pixels, cmap=cmap, extent=extent)
    axes[2].imshow(rollout.numpy(), cmap="inferno", alpha=0.55, extent=extent, interpolation="nearest")
    axes[2].set_title("overlay")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
