"""Box and point prompts derived from a ground-truth mask.

Coordinates are pixels (x = column, y = row); a box is (x1, y1, x2, y2) with x2/y2 the last
foreground column/row (inclusive), as in MedSAM and SAM-Med2D. An empty mask gives a zero box
flagged invalid and points labelled -1 (SAM's "not a point"). A 3D mask ``[D, H, W]`` gives voxels in
array order, as the volume models take them: boxes (z0, y0, x0, z1, y1, x1), points (z, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class MaskPrompt:
    """The prompts derived from one mask, as arrays; the dataset stacks them into the batch fields that
    :class:`medpeft.models.prompts.Prompts` (the model's per-batch, per-class prompts) is read from."""

    box: np.ndarray  # float32 [4] (3D: [6])
    box_valid: bool
    points: np.ndarray  # float32 [N, 2] as (x, y) (3D: [N, 3] as (z, y, x))
    point_labels: np.ndarray  # int64 [N]: 1 positive, 0 negative, -1 not a point


def _order(coords: np.ndarray) -> np.ndarray:
    """Array-order coordinates ``[..., ndim]`` in the prompt convention: (x, y) in 2D, as they are in 3D."""
    return coords[..., ::-1] if coords.shape[-1] == 2 else coords


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """Tight box float32 (x1, y1, x2, y2) around a 2D mask, (z0, y0, x0, z1, y1, x1) around a 3D one;
    zeros for an empty mask."""
    idx = np.argwhere(mask)
    if not len(idx):
        return np.zeros(2 * np.ndim(mask), np.float32)
    return np.concatenate([_order(idx.min(0)), _order(idx.max(0))]).astype(np.float32)


def tight_box(mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """The deterministic (evaluation) box and whether it is valid (mask not empty)."""
    return mask_to_box(mask), bool(np.any(mask))


def _hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return (
        (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    )


def jitter_box(
    box: np.ndarray,
    rng: np.random.Generator,
    max_shift_frac: float = 0.1,
    max_shift_px: float = 20.0,
    image_size: int | tuple[int, int] | None = None,
) -> np.ndarray:
    """Move each side independently by up to min(frac * box side, px) pixels, clipped to the image.

    ``image_size`` is (H, W) or S for S x S (a 3D box: (D, H, W)); the result keeps start <= end.
    """
    box = np.asarray(box, np.float32)
    n = len(box) // 2
    sides = box[n:] - box[:n]
    limits = np.minimum(np.concatenate([sides, sides]) * max_shift_frac, max_shift_px)
    out = np.round(box + rng.uniform(-1.0, 1.0, 2 * n).astype(np.float32) * limits)
    if image_size is not None:
        shape = _hw(image_size) if n == 2 else tuple(int(s) for s in image_size)
        upper = np.array(_order(np.array(shape)), np.float32) - 1
        out = np.clip(out, 0, np.concatenate([upper, upper]))
    return np.concatenate([np.minimum(out[:n], out[n:]), np.maximum(out[:n], out[n:])]).astype(np.float32)


def _pick(coords: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if n == 0 or len(coords) == 0:
        return np.zeros((0, coords.shape[1]), np.float32)
    idx = rng.choice(len(coords), size=n, replace=len(coords) < n)
    return _order(coords[idx]).astype(np.float32)  # (row, col) -> (x, y); 3D stays (z, y, x)


def sample_points(
    mask: np.ndarray,
    rng: np.random.Generator,
    n_pos: int = 1,
    n_neg: int = 0,
    region: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform positive points inside and negative points outside the mask (within ``region``).

    Returns points float32 [n_pos + n_neg, 2] as (x, y) (3D: [.., 3] as (z, y, x)) and labels int64
    (1 / 0). Points that cannot be drawn (empty mask, or no background) are zeros with label -1.
    """
    mask = np.asarray(mask, bool)
    n = n_pos + n_neg
    points = np.zeros((n, mask.ndim), np.float32)
    labels = np.full(n, -1, np.int64)
    if not mask.any():
        return points, labels
    pos = _pick(np.argwhere(mask), n_pos, rng)
    outside = ~mask if region is None else (~mask & region)
    neg = _pick(np.argwhere(outside), n_neg, rng)
    points[: len(pos)] = pos
    labels[: len(pos)] = 1
    points[n_pos : n_pos + len(neg)] = neg
    labels[n_pos : n_pos + len(neg)] = 0
    return points, labels


def center_point(mask: np.ndarray) -> np.ndarray:
    """float32 (x, y) (3D: (z, y, x)) of the foreground pixel farthest from the boundary (ties: the most
    central); zeros if empty."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros(mask.ndim, np.float32)
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[(slice(1, -1),) * mask.ndim]
    ties = np.argwhere(dist == dist.max())  # e.g. a whole ridge for a rectangle: take its middle
    best = ties[int(np.argmin(((ties - ties.mean(axis=0)) ** 2).sum(axis=1)))]
    return _order(best).astype(np.float32)


def train_prompts(
    mask: np.ndarray,
    rng: np.random.Generator,
    n_pos: int = 1,
    n_neg: int = 0,
    box_jitter: float = 0.1,
    box_jitter_px: float = 20.0,
    region: np.ndarray | None = None,
) -> MaskPrompt:
    """Random prompts: jittered box and uniformly sampled points."""
    box, valid = tight_box(mask)
    if valid and box_jitter > 0:
        box = jitter_box(box, rng, box_jitter, box_jitter_px, mask.shape)
    points, labels = sample_points(mask, rng, n_pos, n_neg, region)
    return MaskPrompt(box, valid, points, labels)


def eval_prompts(
    mask: np.ndarray,
    rng: np.random.Generator,
    n_pos: int = 1,
    n_neg: int = 0,
    region: np.ndarray | None = None,
) -> MaskPrompt:
    """Deterministic prompts: tight box, centre point first; further points from ``rng`` (seed it fixed)."""
    box, valid = tight_box(mask)
    points, labels = sample_points(mask, rng, n_pos, n_neg, region)
    if valid and n_pos > 0:
        points[0] = center_point(mask)
    return MaskPrompt(box, valid, points, labels)
