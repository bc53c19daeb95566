"""Segmentation evaluation: validation Dice during training (at the model's input size), and the full
evaluation at each image's original resolution (per-image CSV, summary JSON, table, overlays)."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from medpeft.data.dataset import SegmentationDataset
from medpeft.data.io import load_image, load_masks
from medpeft.data.transforms import undo_resize
from medpeft.metrics import assd_per_class, dice_per_class, hd95_per_class, iou_per_class, summarize
from medpeft.metrics.curves import curve_scores
from medpeft.models.prompts import Prompts
from medpeft.tasks.segmentation import model_inputs
from medpeft.viz import save_overlay

METRICS = ("dice", "iou", "assd", "hd95", "curve_assd")


def evaluate(
    model: nn.Module,
    dataset: SegmentationDataset,
    mode: str = "box",
    out_dir: Path | None = None,
    empty_score: float = 1.0,
    threshold: float = 0.5,
    spacing: tuple[float, float] | None = None,
    surface: bool = True,
    overlays: bool = True,
    batch_size: int = 2,
    progress: bool = True,
    not_scored: list[str] | None = None,
    curves: bool | None = None,
) -> dict[str, Any]:
    """Score every image and class; writes ``per_image.csv``, ``summary.json`` and overlays to ``out_dir``.

    ``curves`` (default: when the dataset holds landmark curves) adds ``curve_assd``
    (:func:`medpeft.metrics.curves.curve_scores`: mean of the two directed mean distances, empty curves
    by stated conventions) and counts each convention in ``summary["curve_status"]``.

    ``not_scored``: labels of the model the evaluated data does not annotate (listed in the summary and
    left out of the class mean). ``overlays``: draw the best, median and worst case of each class
    (``overlays/<image>.png``, listed in ``overlays.json``).
    """
    labels = [n for n in dataset.label_names if n not in (not_scored or [])]
    if curves is None:
        curves = any(r.contours is not None or r.line_width > 1 for r in dataset.records)
    rows: list[dict[str, Any]] = []
    index_of: dict[str, int] = {}
    bar = tqdm(total=len(dataset), desc=f"evaluate ({mode})", unit="img", disable=not progress)
    for batch, logits in predict_batches(model, dataset, mode, batch_size):
        probs = torch.sigmoid(logits).cpu()
        for i, index in enumerate(batch["index"].tolist()):
            meta = dataset.get_meta(index)
            keep = batch["class_valid"][i].cpu()  # skip labels the image is not annotated for
            names = [dataset.label_names[j] for j in batch["class_ids"][i].cpu()[keep].tolist()]
            prob = undo_resize(probs[i][keep], meta.geometry, "bilinear").numpy()
            pred = prob > threshold
            truth = load_masks(dataset.records[index], names)
            px = meta.spacing or spacing
            index_of[meta.stem] = index
            scores = {
                "dice": dice_per_class(pred[None], truth[None], empty_score)[0],
                "iou": iou_per_class(pred[None], truth[None], empty_score)[0],
            }
            if surface:
                scores["assd"] = assd_per_class(pred[None], truth[None], px)[0]
                scores["hd95"] = hd95_per_class(pred[None], truth[None], px)[0]
            for c, name in enumerate(names):
                row = {
                    "image": meta.stem,
                    "label": name,
                    "gt_pixels": int(truth[c].sum()),
                    "pred_pixels": int(pred[c].sum()),
                }
                row.update({k: float(v[c]) for k, v in scores.items()})
                if curves:
                    curve = curve_scores(pred[c], truth[c], px)
                    row.update(curve_assd=curve.assd, curve_status=curve.status)
                rows.append(row)
            bar.update(1)
    bar.close()
    summary = summarize_rows(rows, labels, mode, units="mm" if spacing or _any_spacing(dataset) else "pixels")
    summary["labels_not_scored"] = list(not_scored or [])
    if curves:
        summary["curve_status"] = dict(Counter(r["curve_status"] for r in rows))
    if out_dir is not None:
        write_results(out_dir, rows, summary)
        if overlays:
            cases = extreme_cases(rows, labels)
            draw_cases(model, dataset, mode, [index_of[c["image"]] for c in cases], out_dir, threshold)
            (out_dir / "overlays.json").write_text(json.dumps(cases, indent=2))
    return summary


def extreme_cases(rows: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """Best, median and worst image of each class by Dice (images where the class is present first)."""
    cases = []
    for name in labels:
        sel = [r for r in rows if r["label"] == name and math.isfinite(r["dice"])]
        present = [r for r in sel if r["gt_pixels"] > 0]
        ranked = sorted(present or sel, key=lambda r: r["dice"], reverse=True)
        if not ranked:
            continue
        picks = {"best": ranked[0], "median": ranked[len(ranked) // 2], "worst": ranked[-1]}
        for rank, r in picks.items():
            cases.append(
                {
                    "label": name,
                    "rank": rank,
                    "image": r["image"],
                    "dice": r["dice"],
                    "file": f"overlays/{r['image']}.png",
                }
            )
    return cases


def draw_cases(
    model: nn.Module,
    dataset: SegmentationDataset,
    mode: str,
    indices: list[int],
    out_dir: Path,
    threshold: float,
) -> None:
    """Predict the chosen images again (prompts are deterministic) and write their overlays."""
    indices = sorted(set(indices))
    for batch, logits in predict_batches(model, Subset(dataset, indices), mode, 4):
        probs = torch.sigmoid(logits).cpu()
        for i, index in enumerate(batch["index"].tolist()):
            meta = dataset.get_meta(index)
            keep = batch["class_valid"][i].cpu()
            names = [dataset.label_names[j] for j in batch["class_ids"][i].cpu()[keep].tolist()]
            pred = undo_resize(probs[i][keep], meta.geometry, "bilinear").numpy() > threshold
            truth = load_masks(dataset.records[index], names)
            save_overlay(out_dir / "overlays" / f"{meta.stem}.png", load_image(meta.path), pred, names, truth)


def _any_spacing(dataset: SegmentationDataset) -> bool:
    return any(r.spacing for r in dataset.records)


def summarize_rows(rows: list[dict[str, Any]], labels: list[str], mode: str, units: str) -> dict[str, Any]:
    """Per-class mean/std of each metric over images (non-finite values left out), and the mean over
    classes, through :func:`medpeft.metrics.summarize` on an [images, classes] table per metric."""
    images = sorted({r["image"] for r in rows})
    row_of, col_of = {im: i for i, im in enumerate(images)}, {n: j for j, n in enumerate(labels)}
    per_class: dict[str, dict[str, Any]] = {n: {"n": sum(r["label"] == n for r in rows)} for n in labels}
    mean = {}
    for m in METRICS:
        table = np.full((len(images), len(labels)), np.nan)
        for r in rows:
            if m in r and math.isfinite(r[m]):
                table[row_of[r["image"]], col_of[r["label"]]] = r[m]
        stats = summarize(table, labels)
        for name in labels:
            c = stats["per_class"][name]
            per_class[name][m] = math.nan if c["mean"] is None else c["mean"]
            per_class[name][f"{m}_std"] = math.nan if c["std"] is None else c["std"]
        mean[m] = math.nan if stats["mean"] is None else stats["mean"]
    return {
        "prompt_mode": mode,
        "images": len(images),
        "distance_units": units,
        "per_class": per_class,
        "mean": mean,
    }


def write_results(out_dir: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = ["image", "label", *[m for m in METRICS if rows and m in rows[0]], "gt_pixels", "pred_pixels"]
    fields += ["curve_status"] if rows and "curve_status" in rows[0] else []
    with (out_dir / "per_image.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table of per-class and mean metrics."""
    curves = "curve_status" in summary
    shown = METRICS if curves else METRICS[:-1]
    head = f"{'label':<24}{'n':>5}{'Dice':>9}{'IoU':>9}{'ASSD':>9}{'HD95':>9}" + (
        f"{'curveASSD':>10}" if curves else ""
    )
    lines = [
        f"prompts: {summary['prompt_mode']}   distances in {summary['distance_units']}",
        head,
        "-" * len(head),
    ]

    def fmt(v: float, m: str) -> str:
        width = 10 if m == "curve_assd" else 9
        return f"{v:{width}.3f}" if isinstance(v, float) and math.isfinite(v) else f"{'-':>{width}}"

    for name, s in summary["per_class"].items():
        lines.append(f"{name[:23]:<24}{s['n']:>5}" + "".join(fmt(s[m], m) for m in shown))
    lines.append("-" * len(head))
    lines.append(f"{'mean':<24}{summary['images']:>5}" + "".join(fmt(summary["mean"][m], m) for m in shown))
    if curves:
        lines.append(
            "curveASSD: mean of the two directed mean distances between curves; empty curves: "
            + ", ".join(f"{k} {v}" for k, v in sorted(summary["curve_status"].items()))
        )
    return "\n".join(lines)


@torch.no_grad()
def predict_batches(model: nn.Module, dataset: Dataset, mode: str, batch_size: int):
    """Yield (batch, logits) over a dataset with deterministic prompts of one mode."""
    was_training = model.training
    model.eval()
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            batch = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            yield batch, model(batch["image"], Prompts.from_batch(batch, mode), **model_inputs(batch))
    finally:
        model.train(was_training)


def dice_by_class(
    model: nn.Module, dataset: SegmentationDataset, mode: str, batch_size: int = 2
) -> dict[str, float]:
    """Mean Dice per label at the model's input resolution (against the items' own masks, so a rotated
    dataset is scored against its rotated masks)."""
    sums = torch.zeros(dataset.num_classes, dtype=torch.float64)
    counts = torch.zeros(dataset.num_classes, dtype=torch.float64)
    for batch, logits in predict_batches(model, dataset, mode, batch_size):
        dice = dice_per_class(logits > 0, batch["masks"] > 0.5).cpu().double()
        valid = batch["class_valid"].cpu() & torch.isfinite(dice)
        ids = batch["class_ids"].cpu()
        sums.index_add_(0, ids[valid], dice[valid])
        counts.index_add_(0, ids[valid], torch.ones_like(dice[valid]))
    return {n: float(sums[i] / counts[i]) for i, n in enumerate(dataset.label_names) if counts[i] > 0}


def validate(model: nn.Module, dataset: Dataset, mode: str, batch_size: int = 2) -> float:
    """Mean Dice over images and classes (empty prediction on empty mask counts as 1)."""
    scores = []
    for batch, logits in predict_batches(model, dataset, mode, batch_size):
        dice = dice_per_class(logits > 0, batch["masks"] > 0.5)
        if "class_valid" in batch:  # labels an image is not annotated for are not scored
            dice = torch.where(batch["class_valid"].to(dice.device), dice, torch.nan)
        scores.append(dice)
    return float(torch.cat(scores).nanmean())
