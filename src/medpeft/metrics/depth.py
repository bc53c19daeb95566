"""Monocular-depth metrics (Eigen et al. set, as in Monodepth2/DARES evaluation) over valid pixels.

Hand-written because MONAI has no depth metrics. Each metric takes ``pred`` and ``gt`` of equal shape
(torch or numpy, any layout), computes in float64 over the pixels selected by :func:`valid_depth_mask`
(``gt`` finite and ``> 0``, strictly inside ``(min_depth, max_depth)`` when given, and inside the
optional boolean ``mask``), and returns a Python float; NaN when no pixel is valid. Every valid
pixel counts once, so pass one image to get per-image values (Monodepth2 averages those over images).
Predictions are not clamped here: clamp them to ``[min_depth, max_depth]`` first if the protocol does.
"""

from __future__ import annotations

import torch

from .segmentation import ArrayLike


def valid_depth_mask(
    gt: ArrayLike,
    mask: ArrayLike | None = None,
    min_depth: float | None = None,
    max_depth: float | None = None,
) -> torch.Tensor:
    """Boolean mask of pixels with finite ``gt > max(0, min_depth)``, ``gt < max_depth`` and ``mask`` set."""
    g = torch.as_tensor(gt)
    valid = torch.isfinite(g) & (g > 0)
    if min_depth is not None:
        valid &= g > min_depth
    if max_depth is not None:
        valid &= g < max_depth
    if mask is not None:
        m = torch.as_tensor(mask, device=g.device)
        if m.shape != g.shape:
            raise ValueError(
                f"mask and gt must have the same shape, got mask {tuple(m.shape)} and gt {tuple(g.shape)}"
            )
        valid &= m.bool()
    return valid


def _valid_pairs(
    pred: ArrayLike,
    gt: ArrayLike,
    mask: ArrayLike | None,
    min_depth: float | None,
    max_depth: float | None,
    positive_pred: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D float64 ``(pred, gt)`` at the valid pixels."""
    p, g = torch.as_tensor(pred), torch.as_tensor(gt)
    if p.shape != g.shape:
        raise ValueError(
            f"pred and gt must have the same shape, got pred {tuple(p.shape)} and gt {tuple(g.shape)}"
        )
    valid = valid_depth_mask(g, mask, min_depth, max_depth)
    p, g = p.to(g.device)[valid].double(), g[valid].double()
    if positive_pred and not bool((p > 0).all()):
        raise ValueError(
            "pred must be > 0 on valid pixels for ratio/log metrics; clamp it to min_depth first"
        )
    return p, g


def _mean(x: torch.Tensor) -> float:
    return float(x.mean()) if x.numel() else float("nan")


# The formulas, on the 1-D valid pairs: the public functions below select those pairs, and
# ``depth_metrics`` selects them once for all seven.


def _abs_rel(p: torch.Tensor, g: torch.Tensor) -> float:
    return _mean((g - p).abs() / g)


def _sq_rel(p: torch.Tensor, g: torch.Tensor) -> float:
    return _mean((g - p) ** 2 / g)


def _rmse(p: torch.Tensor, g: torch.Tensor) -> float:
    return _mean((g - p) ** 2) ** 0.5


def _rmse_log(p: torch.Tensor, g: torch.Tensor) -> float:
    return _mean((g.log() - p.log()) ** 2) ** 0.5


def _delta(p: torch.Tensor, g: torch.Tensor, thresh: float, power: int) -> float:
    return _mean((torch.maximum(p / g, g / p) < thresh**power).double())


def abs_rel(
    pred: ArrayLike,
    gt: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    min_depth: float | None = None,
    max_depth: float | None = None,
) -> float:
    """Mean of ``|gt - pred| / gt``."""
    return _abs_rel(*_valid_pairs(pred, gt, mask, min_depth, max_depth))


def sq_rel(
    pred: ArrayLike,
    gt: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    min_depth: float | None = None,
    max_depth: float | None = None,
) -> float:
    """Mean of ``(gt - pred)^2 / gt``."""
    return _sq_rel(*_valid_pairs(pred, gt, mask, min_depth, max_depth))


def rmse(
    pred: ArrayLike,
    gt: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    min_depth: float | None = None,
    max_depth: float | None = None,
) -> float:
    """``sqrt(mean((gt - pred)^2))``."""
    return _rmse(*_valid_pairs(pred, gt, mask, min_depth, max_depth))


def rmse_log(
    pred: ArrayLike,
    gt: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    min_depth: float | None = None,
    max_depth: float | None = None,
) -> float:
    """``sqrt(mean((ln gt - ln pred)^2))``; ``pred`` must be positive on valid pixels."""
    return _rmse_log(*_valid_pairs(pred, gt, mask, min_depth, max_depth, positive_pred=True))


def delta_accuracy(
    pred: ArrayLike,
    gt: ArrayLike,
    thresh: float = 1.25,
    power: int = 1,
    *,
    mask: ArrayLike | None = None,
    min_depth: float | None = None,
    max_depth: float | None = None,
) -> float:
    """Fraction of pixels with ``max(pred/gt, gt/pred) < thresh**power`` (strict); ``pred`` must be positive."""
    p, g = _valid_pairs(pred, gt, mask, min_depth, max_depth, positive_pred=True)
    return _delta(p, g, thresh, power)


def median_scale(
    pred: ArrayLike,
    gt: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    min_depth: float | None = None,
    max_depth: float | None = None,
) -> tuple[torch.Tensor, float]:
    """Scale ``pred`` by ``median(gt) / median(pred)`` over valid pixels; return ``(pred * ratio, ratio)``.

    Medians average the two middle values on even counts, as ``np.median`` in Monodepth2's evaluation.
    The ratio is NaN when no pixel is valid.
    """
    p, g = _valid_pairs(pred, gt, mask, min_depth, max_depth)
    ratio = _median(g) / _median(p) if p.numel() else float("nan")
    return torch.as_tensor(pred) * ratio, ratio


def _median(x: torch.Tensor) -> float:
    """Median of a 1-D tensor, averaging the two middle values (``torch.median`` takes the lower one)."""
    s = x.sort().values
    n = s.numel()
    return float((s[(n - 1) // 2] + s[n // 2]) / 2)


def depth_metrics(
    pred: ArrayLike,
    gt: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    min_depth: float | None = None,
    max_depth: float | None = None,
) -> dict[str, float]:
    """All seven metrics in the usual order: abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3 (the valid pixels
    are selected once; ``pred`` must be positive on them, as for ``rmse_log``)."""
    p, g = _valid_pairs(pred, gt, mask, min_depth, max_depth, positive_pred=True)
    return {
        "abs_rel": _abs_rel(p, g),
        "sq_rel": _sq_rel(p, g),
        "rmse": _rmse(p, g),
        "rmse_log": _rmse_log(p, g),
        "a1": _delta(p, g, 1.25, 1),
        "a2": _delta(p, g, 1.25, 2),
        "a3": _delta(p, g, 1.25, 3),
    }
