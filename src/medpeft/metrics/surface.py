"""Surface-distance metrics (ASSD, HD95) on binary masks shaped ``[B, C, *spatial]``, via MONAI.

Surfaces are the mask voxels removed by one binary erosion (MONAI's definition); distances are
Euclidean between surface-voxel centres. ``spacing`` gives one voxel size per spatial axis in array
order (``(row, col)`` in 2D, ``(depth, row, col)`` in 3D, e.g. ``(3.0, 1.0, 1.0)``) and makes the
result physical; ``None`` means pixels. Results are float32 ``[B, C]``.

Edge cases, enforced here (MONAI 1.6 returns NaN when both masks are empty, and inf (ASSD) or
NaN (HD95) when one is): both pred and target empty -> 0.0; exactly one empty -> NaN (undefined).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Sequence

import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

from .segmentation import ArrayLike, _as_masks

Spacing = Sequence[float] | float | None


def _per_pair(
    pred: ArrayLike,
    target: ArrayLike,
    spacing: Spacing,
    metric: Callable[[torch.Tensor, torch.Tensor, Spacing], torch.Tensor],
) -> torch.Tensor:
    """Run ``metric`` on each (batch, class) pair where both masks are non-empty; apply the edge cases."""
    p, t = _as_masks(pred, target)
    n_spatial = p.ndim - 2
    if spacing is not None:
        sp = (
            [float(spacing)] * n_spatial if isinstance(spacing, numbers.Real) else [float(s) for s in spacing]
        )
        if len(sp) != n_spatial or min(sp) <= 0:
            raise ValueError(
                f"spacing must be {n_spatial} positive voxel sizes (one per spatial axis), got {spacing}"
            )
        spacing = sp
    dims = tuple(range(2, p.ndim))
    p_any, t_any = p.bool().any(dim=dims), t.bool().any(dim=dims)
    out = torch.full(p.shape[:2], float("nan"), dtype=torch.float32, device=p.device)
    out[~p_any & ~t_any] = 0.0
    for b, c in (p_any & t_any).nonzero().tolist():
        with warnings.catch_warnings():  # MONAI 1.6 warns about its own internal use of a deprecated argument
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
            out[b, c] = metric(p[b : b + 1, c : c + 1], t[b : b + 1, c : c + 1], spacing).reshape(())
    return out


def assd_per_class(pred: ArrayLike, target: ArrayLike, spacing: Spacing = None) -> torch.Tensor:
    """Average symmetric surface distance, ``[B, C]``: mean over both surfaces of the distance to the other one."""
    return _per_pair(
        pred,
        target,
        spacing,
        lambda p, t, s: compute_average_surface_distance(
            p, t, include_background=True, symmetric=True, spacing=s
        ),
    )


def hd95_per_class(pred: ArrayLike, target: ArrayLike, spacing: Spacing = None) -> torch.Tensor:
    """95th-percentile Hausdorff distance, ``[B, C]``: max of the two directed 95th percentiles (linear interp.)."""
    return _per_pair(
        pred,
        target,
        spacing,
        lambda p, t, s: compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=s),
    )
