"""Pictures people look at: mask overlays and training curves (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
        [220, 190, 255],
    ],
    dtype=np.float32,
)


def color(i: int) -> np.ndarray:
    return PALETTE[i % len(PALETTE)]


def class_colours(labels: list[str]) -> np.ndarray:
    """RGB per class [C, 3]: anatomical landmarks in their annotation colours (ridge red, ligament
    blue, silhouette yellow, as drawn in P2ILF), other classes from the palette."""
    from medpeft.data.landmarks import LANDMARK_COLOURS

    return np.array(
        [LANDMARK_COLOURS.get(n.lower(), tuple(color(i))) for i, n in enumerate(labels)], np.float32
    ).reshape(-1, 3)


def overlay(
    image: np.ndarray,
    masks: np.ndarray,
    alpha: float = 0.45,
    outline: np.ndarray | None = None,
    colours: np.ndarray | None = None,
) -> np.ndarray:
    """Blend binary masks [C, H, W] over an RGB uint8 image; optional ground-truth ``outline`` [C, H, W]
    and class ``colours`` [C, 3] (default: the palette)."""
    out = image.astype(np.float32).copy()
    pick = (lambda c: colours[c]) if colours is not None else color
    for c, m in enumerate(masks.astype(bool)):
        out[m] = (1 - alpha) * out[m] + alpha * pick(c)
    if outline is not None:
        for c, m in enumerate(outline.astype(bool)):
            edge = m & ~_erode(m)
            out[edge] = pick(c) * 0.6 + 100
    return np.clip(out, 0, 255).astype(np.uint8)


def _erode(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1)
    return p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def save_overlay(
    path: Path,
    image: np.ndarray,
    masks: np.ndarray,
    labels: list[str],
    truth: np.ndarray | None = None,
    depth: np.ndarray | None = None,
) -> None:
    """Write an overlay PNG with a legend naming each class present; with ``depth`` [H, W] (larger =
    farther, 0 = unknown), the depth map the model used is drawn beside it. Landmark curves are drawn
    in their annotation colours and nearly opaque, so thin bands stay visible."""
    from medpeft.data.landmarks import LANDMARK_COLOURS

    path.parent.mkdir(parents=True, exist_ok=True)
    colours = class_colours(labels)
    curves = bool(labels) and all(n.lower() in LANDMARK_COLOURS for n in labels)
    aspect = image.shape[0] / max(1, image.shape[1])
    panels = 1 if depth is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 5 * aspect), dpi=100, squeeze=False)
    ax = axes[0, 0]
    ax.imshow(overlay(image, masks, 0.85 if curves else 0.45, truth, colours))
    ax.axis("off")
    if depth is not None:
        from medpeft.data.depth import colorize_depth

        axes[0, 1].imshow(colorize_depth(depth))
        axes[0, 1].set_title("depth used (near red, far blue)", fontsize=8)
        axes[0, 1].axis("off")
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=colours[c] / 255) for c in range(len(labels)) if masks[c].any()
    ]
    names = [labels[c] for c in range(len(labels)) if masks[c].any()]
    if handles:
        ax.legend(handles, names, loc="lower right", fontsize=7, framealpha=0.7)
    if truth is not None:
        ax.set_title("prediction (fill), ground truth (outline)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def label_map(masks: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
    """Binary masks ``[C, ...]`` as one label map (0 background, c + 1 class c; overlaps go to the likeliest
    by ``probs``), uint8 (uint16 beyond 254 classes)."""
    masks = masks.astype(bool)
    score = probs if probs is not None else masks.astype(np.float32)
    best = np.argmax(np.where(masks, score, -np.inf), axis=0)
    return np.where(masks.any(0), best + 1, 0).astype(np.uint8 if masks.shape[0] < 255 else np.uint16)


def save_label_map(path: Path, masks: np.ndarray, probs: np.ndarray | None = None) -> None:
    """Write binary masks [C, H, W] as a PNG label map (:func:`label_map`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label_map(masks, probs)).save(path)


def plot_training_curves(
    history: list[dict[str, float]],
    path: Path,
    metric: str = "dice",
    terms: tuple[str, ...] = ("dice", "bce", "focal"),
) -> None:
    """Training loss (and its ``terms``) and the validation ``metric`` against optimizer steps."""
    train = [h for h in history if "loss" in h]
    key = f"val_{metric}"
    val = [h for h in history if h.get(key) is not None]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5), dpi=100)
    if train:
        steps = [h["step"] for h in train]
        for term in ("loss", *terms):
            if term in train[0]:
                ax[0].plot(
                    steps, [h.get(term, np.nan) for h in train], label=term, lw=1.2 if term == "loss" else 0.8
                )
        ax[0].set_xlabel("step")
        ax[0].set_ylabel("training loss")
        ax[0].legend()
    if val:
        ax[1].plot([h["step"] for h in val], [h[key] for h in val], "o-")
        ax[1].set_xlabel("step")
        ax[1].set_ylabel(f"validation {'Dice' if metric == 'dice' else metric}")
        if metric == "dice":
            ax[1].set_ylim(0, 1)
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
