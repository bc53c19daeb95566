"""Overlap metrics (Dice, IoU) on binary masks shaped ``[B, C, *spatial]``, plus summary statistics.

Conventions: inputs are binary (bool or 0/1) torch tensors or numpy arrays, one channel per class
(one-hot / multi-label), 2D ``[B, C, H, W]`` or 3D ``[B, C, D, H, W]``; outputs are float32 ``[B, C]``.
Logits are rejected: threshold them with :func:`binarize` first.

Empty target: an empty prediction scores ``empty_score`` (default 1.0, like S-SAM and MONAI
``ignore_empty=False``), a non-empty prediction scores 0.0. ``empty_score=nan`` marks every
empty-target case NaN (MONAI ``ignore_empty=True``), so that NaN-aware means skip them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_iou

ArrayLike = torch.Tensor | np.ndarray


def binarize(logits: ArrayLike, threshold: float = 0.0) -> torch.Tensor:
    """Boolean mask ``logits > threshold``.

    ``threshold=0.0`` on logits equals 0.5 on sigmoid probabilities (pass 0.5 for probabilities).
    This suits independent per-channel (sigmoid) outputs; for mutually exclusive softmax classes,
    one-hot encode the argmax instead.
    """
    return torch.as_tensor(logits) > threshold


def _as_masks(pred: ArrayLike, target: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a pred/target pair of binary ``[B, C, *spatial]`` masks; return them as float32 tensors."""
    p, t = torch.as_tensor(pred), torch.as_tensor(target)
    if p.shape != t.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(p.shape)} and target {tuple(t.shape)}"
        )
    if p.ndim not in (4, 5):
        raise ValueError(f"expected masks shaped [B, C, H, W] or [B, C, D, H, W], got {tuple(p.shape)}")
    for name, x in (("pred", p), ("target", t)):
        if x.dtype != torch.bool and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(f"{name} must be a binary (bool or 0/1) mask; threshold logits with binarize()")
    return p.to(torch.float32), t.to(device=p.device, dtype=torch.float32)


def _fill_empty_target(
    scores: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, empty_score: float
) -> torch.Tensor:
    """Apply the empty-target convention to MONAI scores computed with ``ignore_empty=True``.

    Hand-written because MONAI only offers 1.0 (``ignore_empty=False``) or NaN for empty targets.
    """
    dims = tuple(range(2, pred.ndim))
    target_empty = ~target.bool().any(dim=dims)
    if math.isnan(empty_score):
        fill = torch.full_like(scores, float("nan"))
    else:
        pred_empty = ~pred.bool().any(dim=dims)
        fill = torch.where(pred_empty, empty_score, 0.0).to(scores)
    return torch.where(target_empty, fill, scores)


def dice_per_class(pred: ArrayLike, target: ArrayLike, empty_score: float = 1.0) -> torch.Tensor:
    """Dice ``2|P∩T| / (|P|+|T|)`` per batch item and class, ``[B, C]``; empty targets per module docs."""
    p, t = _as_masks(pred, target)
    scores = compute_dice(p, t, include_background=True, ignore_empty=True)
    return _fill_empty_target(scores.float(), p, t, empty_score)


def iou_per_class(pred: ArrayLike, target: ArrayLike, empty_score: float = 1.0) -> torch.Tensor:
    """IoU (Jaccard) ``|P∩T| / |P∪T|`` per batch item and class, ``[B, C]``; empty targets per module docs."""
    p, t = _as_masks(pred, target)
    scores = compute_iou(p, t, include_background=True, ignore_empty=True)
    return _fill_empty_target(scores.float(), p, t, empty_score)


def summarize(values: ArrayLike, names: Sequence[str]) -> dict[str, Any]:
    """NaN-aware per-class statistics of a ``[N, C]`` table (cases x classes), JSON-ready.

    Returns ``{"per_class": {name: {"mean", "std", "n_valid", "n"}}, "mean": ...}``: ``std`` is the
    population std (ddof=0) over non-NaN cases, ``n_valid`` their count, ``n`` all cases; ``mean`` is
    the unweighted mean of the per-class means. Statistics with no valid case are ``None`` (JSON has
    no NaN). A 1-D input is one case. Hand-written because MONAI's reductions give no std or names.
    """
    v = (
        values.detach().cpu().double().numpy()
        if isinstance(values, torch.Tensor)
        else np.asarray(values, float)
    )
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2 or v.shape[1] != len(names):
        raise ValueError(f"values must be [N, C] with C == len(names) == {len(names)}, got {v.shape}")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {list(names)}")
    per_class: dict[str, dict[str, float | int | None]] = {}
    means: list[float] = []
    for j, name in enumerate(names):
        col = v[:, j][~np.isnan(v[:, j])]
        mean = float(col.mean()) if col.size else None
        std = float(col.std()) if col.size else None
        per_class[name] = {"mean": mean, "std": std, "n_valid": int(col.size), "n": int(v.shape[0])}
        if mean is not None:
            means.append(mean)
    return {"per_class": per_class, "mean": float(np.mean(means)) if means else None}
