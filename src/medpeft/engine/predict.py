"""Prediction on new images: PNG label maps and overlays, with box/point prompts from JSON or automatic mode,
or 16-bit depth maps and pictures for a depth model.

The output folder holds the task's folders (``masks/`` + ``overlays/``, or ``depth/`` + ``pictures/``) and
``predictions.json``; the latter carries the marker
``"format": "medpeft-predictions"`` so that a later run can tell a medpeft output folder (which
``overwrite=True`` may replace) from anything else (which it never deletes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from medpeft.data.io import IMAGE_EXTENSIONS, DataError, image_size, load_image
from medpeft.data.transforms import ResizeGeometry, normalize, resize, undo_resize, valid_region
from medpeft.engine.checkpoint import atomic_write_json
from medpeft.models.prompts import Prompts
from medpeft.viz import save_label_map, save_overlay

# Marker in predictions.json: this folder is a medpeft prediction output.
OUTPUT_FORMAT = "medpeft-predictions"
PROMPT_KEYS = ("boxes", "points")
_OUTPUT_DIRS = ("masks", "overlays", "depth", "pictures")
_REPORT = "predictions.json"
# What a broken or unreadable input file raises while it is decoded; such a file is skipped, not fatal.
_UNREADABLE = (DataError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def list_images(path: Path) -> list[Path]:
    """A single image file, or every image in a folder (sorted)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            return files
        raise DataError(f"{path}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    raise DataError(f"{path}: no such file or folder")


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
        raise DataError(f"{path}: cannot read prompts JSON: {_one_line(e)}") from None
    return validate_prompts(data, Path(path), labels, images)


def _one_line(err: BaseException | str) -> str:
    return " ".join(str(err).strip("'\"").split())


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


def _is_medpeft_output(out_dir: Path) -> bool:
    """Whether ``out_dir/predictions.json`` is a report written by :func:`predict` (it holds the marker)."""
    report = out_dir / _REPORT
    if report.is_symlink() or not report.is_file():
        return False
    try:
        data = json.loads(report.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == OUTPUT_FORMAT


def check_output_dir(out_dir: Path, overwrite: bool = False, inputs: list[Path] | None = None) -> list[Path]:
    """Raise a one-line :class:`DataError` unless predictions may go to ``out_dir``; deletes nothing.

    An absent or empty folder is fine. A non-empty one is refused unless ``overwrite`` is set and it is an
    earlier medpeft prediction output holding only ``masks/*.png``, ``overlays/*.png`` and
    ``predictions.json``; then returns those files (what :func:`clear_output` deletes).
    """
    if not out_dir.exists() and not out_dir.is_symlink():
        return []
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise DataError(f"{out_dir} exists and is not a folder; choose another --out")
    entries = sorted(out_dir.iterdir())
    if not entries:
        return []
    if not _is_medpeft_output(out_dir):
        raise DataError(
            f"{out_dir} already holds files and is not a medpeft prediction output (no {_REPORT} with "
            f'"format": "{OUTPUT_FORMAT}"); choose another --out (--overwrite only replaces earlier '
            "medpeft prediction folders)"
        )
    if not overwrite:
        raise DataError(
            f"{out_dir} already holds files (an earlier medpeft prediction); pass --overwrite to replace them "
            "or choose another --out"
        )
    stale: list[Path] = []
    for entry in entries:
        ours = entry.name == _REPORT or entry.name.startswith(f".tmp-{_REPORT}-")  # or a killed write's temp
        if ours and entry.is_file() and not entry.is_symlink():
            stale.append(entry)
            continue
        if entry.name in _OUTPUT_DIRS and entry.is_dir() and not entry.is_symlink():
            files = sorted(entry.iterdir())
            odd = [f for f in files if f.is_symlink() or not f.is_file() or f.suffix.lower() != ".png"]
            if not odd:
                stale += [*files, entry]
                continue
            entry = odd[0]
        raise DataError(
            f"{out_dir} holds {entry.relative_to(out_dir)}, which medpeft predict did not write; not replacing "
            "the folder even with --overwrite; move that file or choose another --out"
        )
    resolved = out_dir.resolve()
    inside = [p for p in inputs or [] if resolved in p.resolve().parents]
    if inside:
        raise DataError(f"{out_dir} holds input image {inside[0]}; choose an --out outside the inputs")
    return stale


def clear_output(stale: list[Path]) -> None:
    """Delete the files and folders of an earlier prediction output that :func:`check_output_dir` listed."""
    for path in stale:
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)


def _write_report(out_dir: Path, report: dict[str, Any]) -> None:
    atomic_write_json(out_dir / _REPORT, report)


def _output_names(images: list[Path]) -> dict[Path, str]:
    """Output file name per input: ``<stem>.png``, or ``<name>.png`` where two inputs share a stem."""
    stems: dict[str, int] = {}
    for p in images:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    return {p: f"{p.stem if stems[p.stem] == 1 else p.name}.png" for p in images}


@torch.no_grad()
def predict(
    model: nn.Module,
    inputs: Path,
    out_dir: Path,
    prompt_file: Path | None = None,
    resize_mode: str = "longest_pad",
    normalize_mode: str = "sam",
    threshold: float = 0.5,
    progress: bool = True,
    overwrite: bool = False,
    writer: PredictionWriter | None = None,
) -> dict[str, Any]:
    """Predict every input image and write what the task writes (segmentation: ``masks/<stem>.png`` and
    ``overlays/<stem>.png``; depth: ``depth/<stem>.png`` and ``pictures/<stem>.png``) plus
    ``predictions.json``.

    Inputs, prompts and the output folder are checked before anything is written (one-line
    :class:`DataError`). An input that cannot be decoded is skipped and listed under ``failed`` in the
    returned report, which is also written to ``predictions.json`` (``{"format", "labels", "images",
    "failed", "complete"}``).
    """
    labels = list(getattr(model, "label_names", []))
    writer = writer or SegmentationWriter(resize_mode, normalize_mode, threshold)
    out_dir = Path(out_dir)
    images = list_images(Path(inputs))
    stale = check_output_dir(out_dir, overwrite, images)
    if prompt_file is not None and not writer.takes_prompts:
        raise DataError(f"--prompts {prompt_file}: a {writer.task} model takes no prompts")
    prompt_data = read_prompt_file(prompt_file, labels, images)
    clear_output(stale)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "format": OUTPUT_FORMAT,
        "task": writer.task,
        "complete": False,
        "labels": labels,
        "images": [],
        "failed": [],
        **writer.describe(model),
    }
    _write_report(out_dir, report)  # marks the folder as ours at once, so an interrupted run can be replaced
    names = _output_names(images)
    model.eval()
    for path in tqdm(images, desc="predict", unit="img", disable=not progress):
        try:
            image = load_image(path)
        except _UNREADABLE as e:
            report["failed"].append({"image": str(path), "error": _one_line(e)})
            continue
        entry = prompt_data.get(path.name, prompt_data.get(path.stem))
        report["images"].append(
            {"image": str(path), **writer.write(model, image, entry, out_dir, names[path])}
        )
    report["complete"] = True
    _write_report(out_dir, report)
    return report


def model_input(
    image: np.ndarray, size: int, resize_mode: str, normalize_mode: str
) -> tuple[torch.Tensor, ResizeGeometry]:
    """An image as the model's [1, 3, S, S] input (padding zeroed after normalisation) and its resize record."""
    resized, _, meta = resize(image, None, size, resize_mode)
    x = normalize(resized, normalize_mode)
    x[~valid_region(meta)] = 0.0
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None], meta


class PredictionWriter:
    """What one task writes per image; the prediction loop is shared."""

    task = "segmentation"
    takes_prompts = True

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Extra fields of ``predictions.json``."""
        return {}

    def write(
        self, model: nn.Module, image: np.ndarray, entry: Any, out_dir: Path, name: str
    ) -> dict[str, Any]:
        raise NotImplementedError


class SegmentationWriter(PredictionWriter):
    """Label maps (``masks/``) and overlays (``overlays/``) under box/point prompts or automatic mode."""

    def __init__(self, resize_mode: str, normalize_mode: str, threshold: float) -> None:
        self.resize_mode, self.normalize_mode, self.threshold = resize_mode, normalize_mode, threshold

    def write(
        self, model: nn.Module, image: np.ndarray, entry: Any, out_dir: Path, name: str
    ) -> dict[str, Any]:
        labels = model.label_names
        tensor, meta = model_input(image, model.image_size, self.resize_mode, self.normalize_mode)
        prompts, mode = image_prompts(entry, labels, meta)
        logits = model(tensor.to(model.device), prompts.to(model.device))[0]
        prob = undo_resize(torch.sigmoid(logits).cpu(), meta, "bilinear").numpy()
        masks = prob > self.threshold
        save_label_map(out_dir / "masks" / name, masks, prob)
        save_overlay(out_dir / "overlays" / name, image, masks, labels)
        return {
            "mask": f"masks/{name}",
            "overlay": f"overlays/{name}",
            "prompt_mode": mode,
            "pixels": {n: int(m.sum()) for n, m in zip(labels, masks, strict=True)},
        }


class DepthWriter(PredictionWriter):
    """16-bit PNG depth (``depth/``) and a colour-mapped picture (``pictures/``) at the input's size.

    Metric models write depth / ``scale`` (so :func:`medpeft.data.depth.read_depth` with the same
    scale reads metres back). Relative models predict affine-invariant disparity, which has no metric
    depth: they write that disparity scaled to 1-65535 per image, and ``predictions.json`` says so.
    """

    task = "depth"
    takes_prompts = False

    def __init__(
        self, image_size: int, scale: float, resize_mode: str = "resize", normalize_mode: str = "sam"
    ) -> None:
        self.image_size, self.scale = image_size, scale
        self.resize_mode, self.normalize_mode = resize_mode, normalize_mode

    def describe(self, model: nn.Module) -> dict[str, Any]:
        if model.kind == "metric":
            return {"depth_png": f"metric depth; metres = value * {self.scale}"}
        return {"depth_png": "relative disparity (larger = nearer), scaled per image to 1-65535; not metric"}

    def write(
        self, model: nn.Module, image: np.ndarray, entry: Any, out_dir: Path, name: str
    ) -> dict[str, Any]:
        from medpeft.data.depth import write_depth_picture, write_depth_png16

        tensor, meta = model_input(image, self.image_size, self.resize_mode, self.normalize_mode)
        output = undo_resize(model(tensor.to(model.device))[0].float().cpu(), meta, "bilinear").numpy()[0]
        if model.kind == "metric":
            write_depth_png16(out_dir / "depth" / name, output, self.scale)
            picture = output
        else:
            span = max(float(output.max() - output.min()), 1e-12)
            write_depth_png16(out_dir / "depth" / name, 1.0 + 65534.0 * (output - output.min()) / span, 1.0)
            picture = 1.0 / np.maximum(
                output - output.min() + 1e-3 * span, 1e-12
            )  # nearer = smaller, as depth
        write_depth_picture(out_dir / "pictures" / name, picture)
        return {"depth": f"depth/{name}", "picture": f"pictures/{name}"}
