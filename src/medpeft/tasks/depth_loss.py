"""Training losses for monocular depth: scale-and-shift-invariant (relative) and SILog (metric).

Every loss takes ``pred`` and ``target`` float [B,1,H,W] and ``valid`` bool [B,1,H,W]; only valid
pixels count, and whatever the other pixels hold (0, NaN, inf) changes neither the value nor the
gradient. A batch without usable pixels gives a zero loss that is still attached to ``pred``'s
graph, so ``backward()`` works on it. Depth *metrics* live in :mod:`medpeft.metrics.depth`.
"""

from __future__ import annotations

import torch


def _check(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
    shapes = (tuple(pred.shape), tuple(target.shape), tuple(valid.shape))
    if pred.ndim != 4 or pred.shape[1] != 1 or len(set(shapes)) != 1:
        raise ValueError(
            f"pred, target and valid must all be [B,1,H,W]; got {shapes[0]}, {shapes[1]}, {shapes[2]}"
        )
    if valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor, got dtype {valid.dtype}")


def _masked(x: torch.Tensor, valid: torch.Tensor, fill: float, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype`` with invalid pixels replaced by ``fill`` (no NaN/inf leaks into sums or grads)."""
    return torch.where(valid, x.to(dtype), torch.full((), fill, dtype=dtype, device=x.device))


def _zero(pred: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """0 attached to ``pred``'s graph (NaNs at invalid pixels stay out of it)."""
    return torch.where(valid, pred, torch.zeros_like(pred)).sum() * 0.0


def _work_dtype(pred: torch.Tensor) -> torch.dtype:
    """At least float32: half-precision sums over a whole image lose the digits the fits need."""
    return torch.promote_types(pred.dtype, torch.float32)


def align_scale_shift(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ``(scale, shift)`` [B] minimising ``sum_valid (scale * pred + shift - target)^2``.

    Closed-form least squares (as MiDaS's ``compute_scale_and_shift``), written with centred moments:
    ``scale = cov(pred, target) / var(pred)``, ``shift = mean(target) - scale * mean(pred)``. Gradients
    flow through both. Images with fewer than 2 valid pixels get scale 1 and shift 0 (no fit exists);
    images whose valid ``pred`` is constant get scale 1 and the shift matching the means (one of the
    equally good fits, and one that still passes gradient to ``pred``).
    """
    _check(pred, target, valid)
    dtype = _work_dtype(pred)
    m = valid.to(dtype)
    p, y = _masked(pred, valid, 0.0, dtype), _masked(target, valid, 0.0, dtype)
    dims = (1, 2, 3)
    n = m.sum(dims)
    n_safe = n.clamp_min(1.0)
    mean_p, mean_y = p.sum(dims) / n_safe, y.sum(dims) / n_safe
    dp = (p - mean_p.view(-1, 1, 1, 1)) * m
    dy = (y - mean_y.view(-1, 1, 1, 1)) * m
    var = (dp * dp).sum(dims) / n_safe
    cov = (dp * dy).sum(dims) / n_safe
    enough = n >= 2
    # var below rounding noise of E[p^2] means constant pred: the ratio would be noise
    fit = enough & (var > torch.finfo(dtype).eps * (mean_p * mean_p + var))
    one = torch.ones_like(var)
    scale = torch.where(fit, cov / torch.where(fit, var, one), one)
    shift = torch.where(enough, mean_y - scale * mean_p, torch.zeros_like(var))
    return scale, shift


def ssi_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scale-and-shift-invariant loss (MiDaS, Ranftl et al.) for relative depth.

    Per image, ``pred`` is aligned to ``target`` with :func:`align_scale_shift`; the loss is the mean
    absolute error of the aligned prediction over the image's valid pixels, averaged over the images
    with at least 2 valid pixels (fewer carry no scale-and-shift-free information; they are left out,
    not counted as 0). MiDaS's paper writes the sum with a factor 1/(2M); this is the plain mean.

    For Depth Anything's relative models the network predicts *disparity* (inverse depth, larger =
    nearer): pass ``pred`` as that output and ``target`` as ``1 / depth`` on valid pixels, not depth.
    """
    scale, shift = align_scale_shift(pred, target, valid)
    dtype = _work_dtype(pred)
    p, y = _masked(pred, valid, 0.0, dtype), _masked(target, valid, 0.0, dtype)
    aligned = scale.view(-1, 1, 1, 1) * p + shift.view(-1, 1, 1, 1)
    err = (aligned - y).abs() * valid.to(dtype)
    n = valid.sum((1, 2, 3))
    per_image = err.sum((1, 2, 3)) / n.clamp_min(1).to(dtype)
    use = n >= 2
    if not bool(use.any()):
        return _zero(pred, valid)
    return per_image[use].mean().to(pred.dtype)


def silog_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    variance_focus: float = 0.5,
    eps: float = 1e-6,
    per_image: bool = False,
) -> torch.Tensor:
    """Scale-invariant log loss ``sqrt(mean(g^2) - variance_focus * mean(g)^2)``, ``g = log pred - log target``.

    As ``SiLogLoss`` in Depth Anything V2's ``metric_depth/util/loss.py`` (their default lambda 0.5, no
    x10 factor; BTS/AdaBins use 0.85 and x10): by default the means run over all valid pixels of the
    batch pooled together, as there; ``per_image=True`` takes the loss per image and averages it
    over the images with valid pixels. ``variance_focus`` in [0, 1]: 0 is RMSE in log space, 1 fully
    scale invariant. ``eps`` floors ``pred`` and ``target`` before the log and the quantity under the
    square root (so an exact fit gives a finite, zero gradient instead of NaN). Both are metric
    depths, ``pred`` positive (e.g. Depth Anything's ``sigmoid * max_depth`` head).
    """
    _check(pred, target, valid)
    if not 0.0 <= variance_focus <= 1.0:
        raise ValueError(f"variance_focus must be in [0, 1], got {variance_focus}")
    dtype = _work_dtype(pred)
    m = valid.to(dtype)
    p = _masked(pred, valid, 1.0, dtype).clamp_min(eps)
    y = _masked(target, valid, 1.0, dtype).clamp_min(eps)
    g = (p.log() - y.log()) * m
    dims = (1, 2, 3) if per_image else (0, 1, 2, 3)
    n = m.sum(dims)
    n_safe = n.clamp_min(1.0)
    mean_g, mean_g2 = g.sum(dims) / n_safe, (g * g).sum(dims) / n_safe
    loss = (mean_g2 - variance_focus * mean_g * mean_g).clamp_min(eps).sqrt()
    use = n > 0
    if not bool(use.any()):
        return _zero(pred, valid)
    return (loss[use].mean() if per_image else loss).to(pred.dtype)
