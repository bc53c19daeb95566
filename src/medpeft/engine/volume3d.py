"""A 3D promptable model (SegVol) on whole volumes at full resolution: zoom-out-zoom-in, a plain sliding
window, or one resized pass; prompts in volume voxels moved into every window; prompts derived from a
ground truth for scoring (SegVol's Figure 5 compares text, box, point and their combinations).

Volumes arrive as the RAS uint8 arrays of :mod:`medpeft.data.volume_io` ``[X, Y, Z]``; the model sees
``[Z, Y, X]`` scaled to [0, 1], as :mod:`medpeft.data.volume_dataset` trains it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from medpeft.data.prompt_sampling import center_point, mask_to_box
from medpeft.engine.zoom import Frame, sliding_window, zoom_out, zoom_out_zoom_in
from medpeft.models.prompts import Prompts

INFERENCE = ("zoom", "sliding", "resize")
ABSENT = -20.0  # logit of a class with no prompt inside an input


def is_volume_model(model: nn.Module) -> bool:
    """Whether ``model`` segments volumes directly (else it is a 2D model run slice by slice)."""
    return getattr(model, "spatial_dims", 2) == 3


def ras_prompts(boxes: dict[str, Any] | None, points: dict[str, Any] | None) -> dict[str, Any]:
    """Prompts in RAS voxels (``boxes``: label -> ``[x1, y1, z1, x2, y2, z2]`` inclusive, a list of such
    per-slice boxes is merged into their hull; ``points``: label -> ``[[x, y, z(, 1|0)], ...]``) in the
    model's (z, y, x) order."""
    out: dict[str, Any] = {"boxes": {}, "points": {}}
    for name, given in (boxes or {}).items():
        many = np.array(given if given and isinstance(given[0], (list, tuple)) else [given], float)
        lo, hi = many[:, :3].min(0), many[:, 3:].max(0)
        out["boxes"][name] = [lo[2], lo[1], lo[0], hi[2], hi[1], hi[0]]
    for name, pts in (points or {}).items():
        out["points"][name] = [[p[2], p[1], p[0], int(p[3]) if len(p) > 3 else 1] for p in pts]
    return out


def truth_prompts(truth: np.ndarray, labels: list[str], mode: str) -> dict[str, Any]:
    """Prompts of ``mode`` from a label map ``[Z, Y, X]`` (values c + 1): each present class's tight box
    and/or its most interior voxel; ``text`` adds nothing here (the class token is the model's)."""
    out: dict[str, Any] = {"boxes": {}, "points": {}}
    for c, name in enumerate(labels):
        mask = truth == c + 1
        if not mask.any():
            continue
        if "box" in mode:
            out["boxes"][name] = mask_to_box(mask).tolist()
        if "point" in mode:
            out["points"][name] = [[*center_point(mask).tolist(), 1]]
    return out


def prompted_predictor(model: nn.Module, prompts: dict[str, Any], text: bool):
    """A :data:`~medpeft.engine.zoom.Predictor` of ``model`` with full-volume prompts moved into each input:
    boxes clipped to it (missed: "no box"), points outside it dropped; a class with no prompt in an input
    (and no text) predicts nothing there."""
    labels = list(model.label_names)
    k = len(labels)
    boxes, points = prompts.get("boxes") or {}, prompts.get("points") or {}
    n_points = max((len(p) for p in points.values()), default=0)

    def predict(x: torch.Tensor, frame: Frame) -> torch.Tensor:
        roi = torch.tensor(x.shape[2:], dtype=torch.float32)
        prompted = torch.full((k,), text)
        box_t = torch.zeros(1, k, 6)
        box_valid = torch.zeros(1, k, dtype=torch.bool)
        for c, name in enumerate(labels):
            if name in boxes:
                b = torch.tensor(boxes[name], dtype=torch.float32).reshape(2, 3)
                lo, hi = frame.map(b[0]), frame.map(b[1])
                if bool(((hi >= 0) & (lo <= roi - 1)).all()):
                    box_t[0, c] = torch.cat([lo.clamp(min=0), torch.minimum(hi, roi - 1)])
                    box_valid[0, c] = prompted[c] = True
        pts_t = torch.zeros(1, k, n_points, 3)
        pt_labels = torch.full((1, k, n_points), -1, dtype=torch.long)
        for c, name in enumerate(labels):
            for j, p in enumerate(points.get(name, [])):
                at = frame.map(torch.tensor(p[:3], dtype=torch.float32))
                if bool(((at >= 0) & (at <= roi - 1)).all()):
                    pts_t[0, c, j], pt_labels[0, c, j] = at, int(p[3])
                    prompted[c] = prompted[c] or int(p[3]) == 1
        use_box, use_points = bool(boxes), n_points > 0
        bundle = Prompts(
            boxes=box_t if use_box else None,
            box_valid=box_valid if use_box else None,
            points=pts_t if use_points else None,
            point_labels=pt_labels if use_points else None,
            class_ids=torch.arange(k)[None],
            text=text,
        ).to(model.device)
        if not bool(prompted.any()):
            return torch.full((1, k, *x.shape[2:]), ABSENT)
        logits = model(x.to(model.device), bundle).float().cpu()
        logits[:, ~prompted] = ABSENT
        return logits

    return predict


@torch.no_grad()
def segment_volume_3d(
    model: nn.Module,
    pixels: np.ndarray,
    prompts: dict[str, Any] | None = None,
    text: bool = True,
    inference: str = "zoom",
    threshold: float = 0.5,
    overlap: float = 0.25,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Label map ``[X, Y, Z]`` (c + 1 = the model's c-th label) of a uint8 RAS volume, and what the inference
    did (``roi``, ``zoom_in_voxels``). ``prompts``: model-order voxels (:func:`ras_prompts`)."""
    if inference not in INFERENCE:
        raise ValueError(f"inference {inference!r}: expected one of {', '.join(INFERENCE)}")
    model.eval()
    volume = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 1, 0), np.float32) / 255.0)[None, None]
    predictor = prompted_predictor(model, prompts or {}, text)
    roi = tuple(model.roi)
    info: dict[str, Any] = {"inference": inference}
    if inference == "zoom":  # box prompts set the region themselves (their union), else the coarse pass
        given = list((prompts or {}).get("boxes", {}).values())
        region = None
        if given:
            lo, hi = np.array(given)[:, :3].min(0), np.array(given)[:, 3:].max(0) + 1
            region = tuple(int(v) for v in (*np.floor(lo), *np.ceil(hi)))
        result = zoom_out_zoom_in(predictor, volume, roi, overlap, threshold, box=region)
        logits = result.logits
        info.update(roi=list(result.roi) if result.roi else None, zoom_in_voxels=result.zoom_in_voxels)
    elif inference == "sliding":
        logits = sliding_window(predictor, volume, roi, overlap)
        info.update(zoom_in_voxels=int(volume[0, 0].numel()))
    else:
        logits = zoom_out(predictor, volume, roi)
    from medpeft.viz import label_map  # matplotlib: only when a label map is made

    prob = torch.sigmoid(logits[0]).numpy()
    return label_map(prob > threshold, prob).transpose(2, 1, 0), info
