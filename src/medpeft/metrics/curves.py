"""Metrics for thin curves (landmarks): Dice, and ASSD as the mean of the two directed average
distances, with explicit conventions for empty curves.

ASSD here is ``(mean_{p in P} d(p, G) + mean_{g in G} d(g, P)) / 2`` over the curve pixels themselves
(a 1-pixel curve is its own surface). MONAI's ``compute_average_surface_distance(symmetric=True)``
instead pools both directions (``(sum_P d + sum_G d) / (|P| + |G|)``), which weights the longer curve
more; for curves of very different lengths the two differ, and the landmark literature uses the
former. Hand-written because MONAI has neither this definition nor the conventions below.

Empty curves, never a crash and never a silent NaN: both empty -> Dice 1, ASSD 0 (``both_empty``);
one empty -> Dice 0 and ASSD = the image diagonal in the given units (the largest distance the image
allows: ``pred_empty`` or ``gt_empty``). Each score carries its ``status`` so a report can count them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class CurveScore:
    """Dice and ASSD of one predicted curve against its ground truth, and which convention applied."""

    dice: float
    assd: float
    status: str  # ok | both_empty | pred_empty | gt_empty


def _directed_mean(src: np.ndarray, dst: np.ndarray, spacing: tuple[float, float]) -> float:
    """Mean distance from every pixel of ``src`` to the nearest pixel of ``dst``."""
    dist = ndimage.distance_transform_edt(~dst, sampling=spacing)
    return float(dist[src].mean())


def curve_scores(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float] | None = None) -> CurveScore:
    """Scores of boolean ``[H, W]`` curves; ``spacing`` (row, col) in mm gives ASSD in mm, else pixels."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if p.shape != g.shape or p.ndim != 2:
        raise ValueError(f"pred and gt must be [H, W] masks of one shape, got {p.shape} and {g.shape}")
    sp = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
    if not p.any() and not g.any():
        return CurveScore(1.0, 0.0, "both_empty")
    if not p.any() or not g.any():
        diagonal = math.hypot(p.shape[0] * sp[0], p.shape[1] * sp[1])
        return CurveScore(0.0, diagonal, "pred_empty" if not p.any() else "gt_empty")
    dice = 2.0 * float((p & g).sum()) / float(p.sum() + g.sum())
    assd = (_directed_mean(p, g, sp) + _directed_mean(g, p, sp)) / 2.0
    return CurveScore(dice, assd, "ok")
