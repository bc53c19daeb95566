"""Segmentation prediction: prompt files (boxes and points per image, checked before anything is
written) and the writer of label maps and overlays."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medpeft.data.dataset import depth_input
from medpeft.data.depth import DEPTH_EXTENSIONS, read_depth
from medpeft.data.io import DataError, image_files, image_size, one_line
from medpeft.data.transforms import ResizeGeometry, model_input, undo_resize
from medpeft.models.prompts import Prompts
from medpeft.tasks.base import PredictionWriter
from medpeft.viz import save_label_map, save_overlay

PROMPT_KEYS = ("boxes", "points")


def read_prompt_file(
    path: Path | None, labels: list[str], images: list[Path] | None = None
) -> dict[str, dict[str, Any]]:
    """Prompts JSON: ``{"<image name or stem>": {"boxes": {"<label>": [x1,y1,x2,y2]},
    "points": {"<label>": [[x, y, 1], [x, y, 0]]}}}`` in original image pixels, checked by
    :func:`validate_prompts` (image keys and bounds only when ``images`` is given)."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read prompts JSON: {one_line(e)}") from None
    return validate_prompts(data, Path(path), labels, images)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _matches(key: str, images: list[Path]) -> list[Path]:
    return [p for p in images if key in (p.name, p.stem)]


def _sizes(paths: list[Path]) -> list[tuple[Path, int, int]]:
    """(path, width, height) of each image whose header can be read; unreadable ones are left out
    (the prediction loop reports them as failed files)."""
    sizes = []
    for p in paths:
        try:
            h, w = image_size(p)
        except DataError:
            continue
        sizes.append((p, w, h))
    return sizes


def validate_prompts(
    data: Any, path: Path, labels: list[str], images: list[Path] | None = None
) -> dict[str, dict[str, Any]]:
    """Check a parsed prompt file; raise a one-line :class:`DataError` naming the file, the image key and
    the offending key or value. With ``images``, every image key must match an input (by file name or
    stem) and boxes/points must lie inside that image (sizes read from the file headers)."""
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: expected a JSON object mapping image names to prompts, got {type(data).__name__}"
        )
    for key, entry in data.items():
        where = f"{path}: image {key!r}"
        if not isinstance(entry, dict):
            raise DataError(
                f"{where}: expected an object with keys {list(PROMPT_KEYS)}, got {type(entry).__name__} "
                f"{_short(entry)}"
            )
        unknown = [k for k in entry if k not in PROMPT_KEYS]
        if unknown:
            raise DataError(f"{where}: unknown key {unknown[0]!r}; valid keys: {list(PROMPT_KEYS)}")
        sizes: list[tuple[Path, int, int]] = []
        if images is not None:
            matched = _matches(key, images)
            if not matched:
                shown = ", ".join(p.name for p in images[:5]) + (", ..." if len(images) > 5 else "")
                raise DataError(
                    f"{where} matches no input image by file name or stem ({len(images)} input(s): {shown})"
                )
            sizes = _sizes(matched)
        for kind in PROMPT_KEYS:
            prompts = entry.get(kind, {})
            if not isinstance(prompts, dict):
                raise DataError(
                    f"{where}: {kind} = {_short(prompts)}: expected an object mapping labels to {kind}"
                )
            for label, value in prompts.items():
                if label not in labels:
                    raise DataError(f"{where} has a prompt for unknown label {label!r}; labels: {labels}")
                check = _check_box if kind == "boxes" else _check_points
                check(f"{where}: {kind}[{label!r}] = {_short(value)}", value, sizes)
    return data


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_box(where: str, box: Any, sizes: list[tuple[Path, int, int]]) -> None:
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        raise DataError(f"{where}: expected a box [x1, y1, x2, y2] of 4 numbers in image pixels")
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise DataError(f"{where}: empty or inverted box; expected x1 < x2 and y1 < y2")
    if min(box) < 0:
        raise DataError(f"{where}: negative coordinate; expected 0 <= x1 < x2 and 0 <= y1 < y2")
    for p, w, h in sizes:
        if x2 > w or y2 > h:
            raise DataError(f"{where}: box lies outside {p.name} ({w}x{h}); expected x2 <= {w}, y2 <= {h}")


def _check_points(where: str, points: Any, sizes: list[tuple[Path, int, int]]) -> None:
    if not isinstance(points, list) or not points:
        raise DataError(f"{where}: expected a non-empty list of points [[x, y], [x, y, label], ...]")
    if all(not isinstance(p, list) for p in points):
        raise DataError(
            f"{where}: expected a list of points; wrap a single point in a list: [{_short(points)}]"
        )
    for point in points:
        if not (isinstance(point, list) and len(point) in (2, 3) and all(_is_number(v) for v in point)):
            raise DataError(f"{where}: point {_short(point)}: expected [x, y] or [x, y, label] of numbers")
        if len(point) == 3 and point[2] not in (0, 1):
            raise DataError(
                f"{where}: point {_short(point)} has label {point[2]!r}; expected 1 (foreground) or 0 (background)"
            )
        x, y = point[:2]
        if x < 0 or y < 0:
            raise DataError(f"{where}: point {_short(point)} has a negative coordinate")
        for p, w, h in sizes:
            if x > w or y > h:
                raise DataError(
                    f"{where}: point {_short(point)} lies outside {p.name} ({w}x{h}); expected x <= {w}, y <= {h}"
                )


def image_prompts(
    entry: dict[str, Any] | None, labels: list[str], meta: ResizeGeometry
) -> tuple[Prompts, str]:
    """Prompts for one image in the model's input frame; automatic mode when the entry has none."""
    c = len(labels)
    scale = np.array(meta.resized_size[::-1], np.float32) / np.array(meta.original_size[::-1], np.float32)
    entry = entry or {}
    boxes_in, points_in = entry.get("boxes", {}), entry.get("points", {})
    prompts = Prompts(class_ids=torch.arange(c)[None])
    if boxes_in:
        boxes = np.zeros((c, 4), np.float32)
        valid = np.zeros(c, bool)
        for name, box in boxes_in.items():
            k = labels.index(name)
            boxes[k] = np.asarray(box, np.float32) * np.tile(scale, 2)
            valid[k] = True
        prompts.boxes, prompts.box_valid = torch.from_numpy(boxes)[None], torch.from_numpy(valid)[None]
    if points_in:
        n = max(len(v) for v in points_in.values())
        pts = np.zeros((c, n, 2), np.float32)
        lab = np.full((c, n), -1, np.int64)
        for name, plist in points_in.items():
            k = labels.index(name)
            for j, p in enumerate(plist):
                pts[k, j] = np.asarray(p[:2], np.float32) * scale
                lab[k, j] = int(p[2]) if len(p) > 2 else 1
        prompts.points, prompts.point_labels = torch.from_numpy(pts)[None], torch.from_numpy(lab)[None]
    mode = "+".join(m for m, on in (("box", bool(boxes_in)), ("point", bool(points_in))) if on) or "auto"
    return prompts, mode


class SegmentationWriter(PredictionWriter):
    """Label maps (``masks/``) and overlays (``overlays/``) under box/point prompts or automatic mode.

    ``depth_scale`` set: the model takes a depth map file per image, found by stem in ``depth_dir``
    (default: ``depth/`` beside the inputs' folder) and checked before anything is written. A
    depth-guided model's overlay shows the depth it used beside the frame.
    """

    def __init__(
        self,
        resize_mode: str,
        normalize_mode: str,
        threshold: float,
        depth_scale: float | None = None,
        depth_dir: Path | None = None,
    ) -> None:
        self.resize_mode, self.normalize_mode, self.threshold = resize_mode, normalize_mode, threshold
        self.depth_scale, self.depth_dir = depth_scale, depth_dir

    def read_prompts(self, path: Path | None, labels: list[str], images: list[Path]) -> dict[str, Any]:
        data = read_prompt_file(path, labels, images)
        if self.depth_scale is None:
            return data
        folder = self.depth_dir or images[0].parent.parent / "depth"
        found = image_files(folder, DEPTH_EXTENSIONS) if folder.is_dir() else {}
        for image in images:
            if image.stem not in found:
                raise DataError(
                    f"{image}: no depth map {folder}/{image.stem}.png|npy|tif; this model takes one per "
                    "image (pass --depth DIR)"
                )
            key = image.name if image.name in data else image.stem
            data[key] = {**data.get(key, {}), "depth": found[image.stem]}
        return data

    def write(
        self, model: nn.Module, image: np.ndarray, entry: Any, out_dir: Path, name: str
    ) -> dict[str, Any]:
        labels = model.label_names
        tensor, meta = model_input(image, model.image_size, self.resize_mode, self.normalize_mode)
        prompts, mode = image_prompts(entry, labels, meta)
        inputs: dict[str, torch.Tensor] = {}
        if self.depth_scale is not None:
            depth = read_depth(entry["depth"], self.depth_scale)
            stem_input = depth_input(depth, model.image_size, self.resize_mode)
            inputs["depth_maps"] = torch.from_numpy(stem_input)[None, None].to(model.device)
        images = tensor.to(model.device)
        logits = model(images, prompts.to(model.device), **inputs)[0]
        prob = undo_resize(torch.sigmoid(logits).cpu(), meta, "bilinear").numpy()
        masks = prob > self.threshold
        save_label_map(out_dir / "masks" / name, masks, prob)
        shown = None
        if hasattr(model, "depth_picture_source"):
            used = model.depth_picture_source(images, inputs.get("depth_maps"))
            if used is not None and self.depth_scale is not None:
                shown = depth  # the file at its own resolution
            elif used is not None:
                shown = undo_resize(used[0].float().cpu(), meta, "nearest").numpy()[0]
        save_overlay(out_dir / "overlays" / name, image, masks, labels, depth=shown)
        return {
            "mask": f"masks/{name}",
            "overlay": f"overlays/{name}",
            "prompt_mode": mode,
            "pixels": {n: int(m.sum()) for n, m in zip(labels, masks, strict=True)},
        }
