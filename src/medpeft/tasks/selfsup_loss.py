"""The self-supervised depth loss (monodepth2, with DARES's multi-scale SSIM option), every term a
per-pixel map until the final masked mean.

- photometric error: ``ssim``: ``alpha * (1 - SSIM) / 2 + (1 - alpha) * L1`` (monodepth2, alpha 0.85,
  3x3 window); ``ms_ssim``: ``alpha * (1 - MS-SSIM) + (1 - alpha) * L1`` (DARES, alpha 0.9), with
  MS-SSIM as kornia's per-pixel map over Gaussian windows of several widths (Zhao et al.). DARES's
  release fed a per-batch scalar MS-SSIM into this per-pixel sum; here it stays a map.
- per-pixel minimum over the source frames; auto-masking keeps a pixel only where the warped source
  explains it better than the unwarped source (static camera, objects moving with it);
- edge-aware smoothness of the mean-normalised disparity, weighted down by 2^scale.

Hand-written because no library has this combination; SSIM maps come from kornia.
"""

from __future__ import annotations

from typing import Literal

import torch
from kornia.losses import MS_SSIMLoss
from kornia.metrics import ssim as ssim_map

Photometric = Literal["ssim", "ms_ssim"]
_MS_SSIM: dict[str, MS_SSIMLoss] = {}


def ms_ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel MS-SSIM ``[B, 1, H, W]`` of images in [0, 1] (kornia, channels averaged)."""
    loss = _MS_SSIM.setdefault("default", MS_SSIMLoss(alpha=1.0, compensation=1.0, reduction="none"))
    return 1.0 - loss(x, y)[:, None]


def photometric_error(
    pred: torch.Tensor, target: torch.Tensor, kind: Photometric = "ssim", alpha: float = 0.85
) -> torch.Tensor:
    """Per-pixel photometric error ``[B, 1, H, W]`` between images ``[B, C, H, W]`` in [0, 1]."""
    l1 = (pred - target).abs().mean(1, keepdim=True)
    if kind == "ssim":
        structure = ((1.0 - ssim_map(pred, target, 3).mean(1, keepdim=True)) / 2.0).clamp(0, 1)
    elif kind == "ms_ssim":
        structure = (1.0 - ms_ssim_map(pred, target)).clamp(0, 2)
    else:
        raise ValueError(f"unknown photometric error {kind!r}; expected 'ssim' or 'ms_ssim'")
    return alpha * structure + (1.0 - alpha) * l1


def edge_aware_smoothness(disp: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Mean of |d disp / dx| e^{-|d I / dx|} + the same in y, on disparity divided by its image mean."""
    disp = disp / disp.mean((2, 3), keepdim=True).clamp_min(1e-7)
    dx = (disp[..., :, :-1] - disp[..., :, 1:]).abs()
    dy = (disp[..., :-1, :] - disp[..., 1:, :]).abs()
    ix = (image[..., :, :-1] - image[..., :, 1:]).abs().mean(1, keepdim=True)
    iy = (image[..., :-1, :] - image[..., 1:, :]).abs().mean(1, keepdim=True)
    return (dx * torch.exp(-ix)).mean() + (dy * torch.exp(-iy)).mean()


def automask(reprojection: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """Pixels ``[B, 1, H, W]`` where the warped sources explain the target better than the unwarped ones
    (per-pixel minima over sources); a fixed 1e-5 margin breaks ties toward masking, as for a
    static pair whose warp is the identity."""
    return reprojection < identity - 1e-5


def min_over_sources(errors: list[torch.Tensor]) -> torch.Tensor:
    """Per-pixel minimum over source frames of ``[B, 1, H, W]`` error maps."""
    return torch.cat(errors, 1).min(1, keepdim=True).values


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over ``mask`` (0 with a graph when nothing is selected)."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)
