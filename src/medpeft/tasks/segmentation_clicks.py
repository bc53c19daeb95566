"""Interactive refinement, simulated as SAM and SAM-Med2D evaluate it: start from a box or one click, then
put each next click at the most interior pixel of the largest error region (positive where the object
was missed, negative where the prediction spilled), feeding the previous logits back as SAM's mask
input, and record Dice after every click.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medpeft.data.prompt_sampling import center_point
from medpeft.metrics import dice_per_class
from medpeft.models.prompts import Prompts

START_MODES = ("point", "box")


def next_click(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, int] | None:
    """``(x, y, label)`` for the next click on one class: the most interior pixel of the largest connected
    error region, label 1 if it is a missed part of the object, 0 if a spurious one; None when the
    prediction is exact."""
    best: tuple[int, np.ndarray, int] | None = None
    for region, label in ((truth & ~pred, 1), (pred & ~truth, 0)):
        parts, n = ndimage.label(region)
        if n:
            sizes = np.bincount(parts.ravel())[1:]
            k = int(sizes.argmax())
            if best is None or sizes[k] > best[0]:
                best = (int(sizes[k]), parts == k + 1, label)
    if best is None:
        return None
    x, y = center_point(best[1])
    return float(x), float(y), best[2]


def to_mask_input(logits: torch.Tensor) -> torch.Tensor:
    """SAM's dense prompt from logits at the model's input size: the same logits at a quarter of it."""
    return F.interpolate(logits, scale_factor=0.25, mode="bilinear", align_corners=False)


def add_clicks(
    points: torch.Tensor, labels: torch.Tensor, pred: np.ndarray, truth: np.ndarray, present: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """One more click per (image, class) ``[B, C]`` where the class is ``present``, by :func:`next_click`
    (a "not a point" elsewhere or where the prediction is exact): points ``[B, C, N + 1, 2]``."""
    new = torch.zeros(*truth.shape[:2], 1, 2)
    new_labels = torch.full((*truth.shape[:2], 1), -1, dtype=torch.long)
    for b, c in zip(*np.nonzero(present), strict=True):
        click = next_click(pred[b, c], truth[b, c])
        if click is not None:
            new[b, c, 0] = torch.tensor(click[:2])
            new_labels[b, c, 0] = click[2]
    return torch.cat([points, new.to(points)], 2), torch.cat([labels, new_labels.to(labels.device)], 2)


@torch.no_grad()
def click_rounds(
    model: nn.Module, batch: dict[str, Any], prompts: Prompts, rounds: int, embeddings: Any = None
) -> Prompts:
    """SAM's iterative training rounds (no gradient): from ``prompts``, add ``rounds`` clicks at the largest
    error region of each present class, each round fed the previous logits as the mask input; returns the
    prompts of the next round (all clicks, the last logits as ``masks``). The image is encoded once (not at
    all when ``embeddings``, e.g. cached, are given)."""
    images = batch["image"]
    truth = (batch["masks"] > 0.5).cpu().numpy()
    present = batch["class_valid"].cpu().numpy() & truth.any((2, 3))
    shape = (*truth.shape[:2], 0)
    points = prompts.points if prompts.points is not None else images.new_zeros(*shape, 2)
    labels = prompts.point_labels
    if labels is None:
        labels = torch.ones(points.shape[:-1], dtype=torch.long, device=images.device)
    was_training = model.training
    model.eval()  # the rounds only pick clicks: no dropout, no statistics updated
    try:
        if embeddings is None:
            embeddings = model.image_embeddings(images)
        for _ in range(rounds):
            logits = model.segment(embeddings, prompts, images.shape[-2:]).float()
            points, labels = add_clicks(points, labels, (logits > 0).cpu().numpy(), truth, present)
            prompts = replace(prompts, points=points, point_labels=labels, masks=to_mask_input(logits))
    finally:
        model.train(was_training)
    return prompts


@torch.no_grad()
def simulate_clicks(
    model: nn.Module,
    dataset: Dataset,
    clicks: int,
    start: str = "point",
    batch_size: int = 2,
    mask_input: bool = True,
) -> dict[str, Any]:
    """Mean Dice per label after each of ``clicks`` interactions (at the model's input resolution, over the
    classes present in each item): ``{"start", "clicks", "mask_input", "per_class": {label: [dice per
    click]}, "mean": [...]}``. ``mask_input``: feed the previous logits back (SAM's mask prompt); a model
    never trained with it (its mask encoder untouched) does better without."""
    if start not in START_MODES:
        raise ValueError(f"click simulation starts from {' or '.join(START_MODES)}, not {start!r}")
    names = list(dataset.label_names)
    sums = np.zeros((clicks, len(names)))
    counts = np.zeros(len(names))
    was_training = model.training
    model.eval()
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            images = batch["image"].to(model.device)
            truth = (batch["masks"] > 0.5).numpy()
            present = batch["class_valid"].numpy() & truth.any((2, 3))
            ids = batch["class_ids"].numpy()
            points = batch["points"][:, :, :1] if start == "point" else torch.zeros(*truth.shape[:2], 0, 2)
            labels = (
                batch["point_labels"][:, :, :1]
                if start == "point"
                else torch.zeros(*truth.shape[:2], 0).long()
            )
            masks = None
            for k in range(clicks):
                prompts = Prompts(
                    boxes=batch["boxes"] if start == "box" else None,
                    box_valid=batch["box_valid"] if start == "box" else None,
                    points=points if points.shape[2] else None,
                    point_labels=labels if points.shape[2] else None,
                    class_ids=batch["class_ids"],
                    masks=masks,
                ).to(model.device)
                logits = model(images, prompts).float().cpu()
                pred = (logits > 0).numpy()
                dice = dice_per_class(pred, truth).numpy()
                for b, c in zip(*np.nonzero(present), strict=True):
                    sums[k, ids[b, c]] += dice[b, c]
                masks = to_mask_input(logits) if mask_input else None
                points, labels = add_clicks(points, labels, pred, truth, present)
            for b, c in zip(*np.nonzero(present), strict=True):
                counts[ids[b, c]] += 1
    finally:
        model.train(was_training)
    seen = counts > 0
    per_class = {n: (sums[:, i] / counts[i]).tolist() for i, n in enumerate(names) if seen[i]}
    mean = (sums[:, seen] / counts[seen]).mean(1).tolist() if seen.any() else [float("nan")] * clicks
    return {
        "start": start,
        "clicks": clicks,
        "mask_input": mask_input,
        "per_class": per_class,
        "mean": mean,
    }


def write_clicks(result: dict[str, Any], out: Path) -> str:
    """``clicks.json``, ``clicks.png`` (Dice against clicks per label and their mean) and a printed table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "clicks.json").write_text(json.dumps(result, indent=2))
    x = np.arange(1, result["clicks"] + 1)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for name, values in result["per_class"].items():
        ax.plot(x, values, marker="o", ms=3, lw=1, label=name)
    ax.plot(x, result["mean"], color="k", lw=2, label="mean")
    ax.set_xlabel("click")
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.set_title(f"interactive refinement from a {result['start']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "clicks.png")
    plt.close(fig)
    head = f"{'label':<24}" + "".join(f"{f'click {k}':>9}" for k in x)
    rows = [head, "-" * len(head)]
    for name, values in [*result["per_class"].items(), ("mean", result["mean"])]:
        rows.append(f"{name[:23]:<24}" + "".join(f"{v:9.3f}" for v in values))
    return "\n".join(rows)
