"""SegVol's zoom-out-zoom-in inference for any 3D predictor, and the plain sliding window it is compared
with; both through MONAI's ``sliding_window_inference`` (Gaussian weighting, overlap).

Zoom out: the whole volume resized to the model's input, predicted once, upsampled. Region of interest:
the box of the coarse prediction's largest connected component per class (or of a given prompt box),
grown by a margin. Zoom in: a sliding window
at full resolution inside that region only; outside it the coarse prediction stands.

A predictor gets each input with its :class:`Frame` (where the input lies in the full volume), so that
prompts given in full-volume voxels can be moved into every window (MONAI's ``with_coord``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int, int, int]  # (z0, y0, x0, z1, y1, x1), end exclusive


@dataclass(frozen=True)
class Frame:
    """Full-volume voxel ``v`` -> input voxel ``(v - offset) * scale`` (per axis z, y, x)."""

    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def map(self, coords: torch.Tensor) -> torch.Tensor:
        """``[..., 3]`` full-volume voxels in this input's voxels."""
        offset = torch.tensor(self.offset, dtype=coords.dtype, device=coords.device)
        scale = torch.tensor(self.scale, dtype=coords.dtype, device=coords.device)
        return (coords - offset) * scale


Predictor = Callable[[torch.Tensor, Frame], torch.Tensor]  # [1, C, D, H, W], frame -> logits [1, K, D, H, W]


def sliding_window(
    predictor: Predictor,
    volume: torch.Tensor,
    roi_size: tuple[int, int, int],
    overlap: float = 0.25,
    origin: tuple[int, int, int] = (0, 0, 0),
) -> torch.Tensor:
    """Full-resolution logits of ``volume`` ``[1, C, D, H, W]`` by Gaussian-weighted overlapping windows;
    ``origin``: where ``volume`` starts in the full volume (a region's corner)."""
    from monai.inferers import sliding_window_inference

    shape = volume.shape[2:]
    pad = [max(r - s, 0) // 2 for r, s in zip(roi_size, shape, strict=True)]  # as MONAI pads small inputs

    def windowed(window: torch.Tensor, where: list) -> torch.Tensor:
        outs = []
        for i, index in enumerate(where):
            starts = [index[k + 2].start for k in range(3)]
            offset = tuple(float(o + s - p) for o, s, p in zip(origin, starts, pad, strict=True))
            outs.append(predictor(window[i : i + 1], Frame(offset)))  # type: ignore[arg-type]
        return torch.cat(outs)

    return sliding_window_inference(
        volume, roi_size, 1, windowed, overlap=overlap, mode="gaussian", with_coord=True
    )  # type: ignore[return-value]


@dataclass(frozen=True)
class ZoomResult:
    """Logits ``[1, K, D, H, W]``, the region of interest (None when the coarse prediction found nothing)
    and the voxels the zoom-in pass covered."""

    logits: torch.Tensor
    roi: Box | None
    zoom_in_voxels: int


def region_of_interest(mask: torch.Tensor, margin: float, minimum: tuple[int, int, int]) -> Box | None:
    """Box around the true voxels of ``mask`` ``[D, H, W]``, grown by ``margin`` of its size on each side
    and to at least ``minimum`` (one window), clipped to the volume; None when nothing is true."""
    idx = mask.nonzero()
    if not len(idx):
        return None
    lo, hi = idx.min(0).values, idx.max(0).values + 1
    box = []
    for axis in range(3):
        size = int(mask.shape[axis])
        extent = int(hi[axis] - lo[axis])
        grow = int(round(margin * extent))
        start, end = int(lo[axis]) - grow, int(hi[axis]) + grow
        short = max(0, min(minimum[axis], size) - (end - start))
        start, end = start - short // 2, end + (short - short // 2)
        shift = max(0, -start) - max(0, end - size)
        box.append((max(0, start + shift), min(size, end + shift)))
    return (box[0][0], box[1][0], box[2][0], box[0][1], box[1][1], box[2][1])


def largest_components(masks: torch.Tensor) -> torch.Tensor:
    """``[K, D, H, W]`` -> ``[D, H, W]``: the union over classes of each class's largest connected
    component (26-connected), so scattered false positives of the coarse pass do not widen the region.
    On scipy's labelling: MONAI's ``KeepLargestConnectedComponent`` needs scikit-image, not a dependency."""
    from scipy import ndimage

    out = torch.zeros(masks.shape[1:], dtype=torch.bool)
    for mask in masks.cpu().numpy():
        labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        if n:
            sizes = np.bincount(labels.ravel())[1:]
            out |= torch.from_numpy(labels == 1 + int(sizes.argmax()))
    return out


def zoom_out(predictor: Predictor, volume: torch.Tensor, roi_size: tuple[int, int, int]) -> torch.Tensor:
    """The whole volume resized to the input, predicted once, logits upsampled to the volume."""
    full = tuple(int(s) for s in volume.shape[2:])
    scale = tuple(r / s for r, s in zip(roi_size, full, strict=True))
    small = F.interpolate(volume, size=roi_size, mode="trilinear", align_corners=False)
    coarse = predictor(small, Frame((0.0, 0.0, 0.0), scale))  # type: ignore[arg-type]
    return F.interpolate(coarse, size=full, mode="trilinear", align_corners=False)


def zoom_out_zoom_in(
    predictor: Predictor,
    volume: torch.Tensor,
    roi_size: tuple[int, int, int],
    overlap: float = 0.25,
    threshold: float = 0.5,
    margin: float = 0.25,
    box: Box | None = None,
) -> ZoomResult:
    """SegVol's two-pass inference of ``volume`` ``[1, C, D, H, W]`` (see the module doc); ``box`` (a
    prompt, voxel ``(z0, y0, x0, z1, y1, x1)``) replaces the coarse prediction's region."""
    full = tuple(int(s) for s in volume.shape[2:])
    logits = zoom_out(predictor, volume, roi_size)
    if box is None:
        found = largest_components(torch.sigmoid(logits[0]) > threshold)
        roi = region_of_interest(found, margin, roi_size)
    else:
        marker = torch.zeros(full, dtype=torch.bool)
        marker[box[0] : box[3], box[1] : box[4], box[2] : box[5]] = True
        roi = region_of_interest(marker, margin, roi_size)
    if roi is None:
        return ZoomResult(logits, None, 0)
    z0, y0, x0, z1, y1, x1 = roi
    inside = sliding_window(predictor, volume[..., z0:z1, y0:y1, x0:x1], roi_size, overlap, (z0, y0, x0))
    logits = logits.clone()
    logits[..., z0:z1, y0:y1, x0:x1] = inside
    return ZoomResult(logits, roi, (z1 - z0) * (y1 - y0) * (x1 - x0))
