"""Prediction on new images: PNG label maps and overlays, with box/point prompts from JSON or automatic mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medpeft.data.readers import IMAGE_EXTENSIONS, DataError, load_image
from medpeft.data.transforms import normalize, resize, undo_resize, valid_region
from medpeft.models.prompts import Prompts
from medpeft.models.segmenter import SamSegmenter
from medpeft.viz import save_label_map, save_overlay


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


def read_prompt_file(path: Path | None, labels: list[str]) -> dict[str, dict[str, Any]]:
    """Prompts JSON: ``{"<image name or stem>": {"boxes": {"<label>": [x1,y1,x2,y2]},
    "points": {"<label>": [[x, y, 1], [x, y, 0]]}}}`` in original image pixels."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read prompts JSON: {e}") from None
    for image, entry in data.items():
        for kind in ("boxes", "points"):
            for label in (entry or {}).get(kind, {}):
                if label not in labels:
                    raise DataError(
                        f"{path}: image {image!r} has a prompt for unknown label {label!r}; labels: {labels}"
                    )
    return data


def image_prompts(
    entry: dict[str, Any] | None, labels: list[str], meta: dict[str, Any]
) -> tuple[Prompts, str]:
    """Prompts for one image in the model's input frame; automatic mode when the entry has none."""
    c = len(labels)
    scale = np.array(meta["resized_size"][::-1], np.float32) / np.array(
        meta["original_size"][::-1], np.float32
    )
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


@torch.no_grad()
def predict(
    model: SamSegmenter,
    inputs: Path,
    out_dir: Path,
    prompt_file: Path | None = None,
    resize_mode: str = "longest_pad",
    normalize_mode: str = "sam",
    threshold: float = 0.5,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Segment every input image; writes ``masks/<stem>.png`` and ``overlays/<stem>.png``."""
    labels = model.label_names
    prompt_data = read_prompt_file(prompt_file, labels)
    model.eval()
    results = []
    for path in tqdm(list_images(inputs), desc="predict", unit="img", disable=not progress):
        image = load_image(path)
        resized, _, meta = resize(image, None, model.image_size, resize_mode)
        x = normalize(resized, normalize_mode)
        x[~valid_region(meta)] = 0.0
        entry = prompt_data.get(path.name, prompt_data.get(path.stem))
        prompts, mode = image_prompts(entry, labels, meta)
        tensor = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(model.device)
        logits = model(tensor, prompts.to(model.device))[0]
        prob = undo_resize(torch.sigmoid(logits).cpu(), meta, "bilinear").numpy()
        masks = prob > threshold
        save_label_map(out_dir / "masks" / f"{path.stem}.png", masks, prob)
        save_overlay(out_dir / "overlays" / f"{path.stem}.png", image, masks, labels)
        results.append(
            {
                "image": str(path),
                "prompt_mode": mode,
                "pixels": {n: int(m.sum()) for n, m in zip(labels, masks, strict=True)},
            }
        )
    (out_dir / "predictions.json").write_text(json.dumps({"labels": labels, "images": results}, indent=2))
    return results
