"""Any 2D segmenter on volumes: slice by slice along an axis (batched, in the same display orientation as
the training slices of :func:`medpeft.data.volumes.export_slices`), prompts from a 3D box or automatic
mode, assembled into a 3D label map; 3D metrics with spacing per case; pictures of three mid-slices.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medpeft.data.transforms import model_input, undo_resize
from medpeft.data.volume_io import Volume, read_volume, to_uint8
from medpeft.data.volumes import from_display, to_display
from medpeft.metrics import assd_per_class, dice_per_class, hd95_per_class, iou_per_class, summarize
from medpeft.models.prompts import Prompts
from medpeft.tasks.segmentation_predict import image_prompts

METRICS = ("dice", "iou", "assd", "hd95")
# The SegVol reproduction study's rotation: 45 degrees about the longitudinal (RAS z) axis plus 0.1 rad
# about the other two; radians about (x, y, z) of the RAS array, as MONAI's ``Rotate`` takes them.
DEFAULT_ROTATION = (0.1, 0.1, math.pi / 4)


def rotate_volume(array: np.ndarray, angles: tuple[float, float, float], label: bool = False) -> np.ndarray:
    """A volume rotated about its centre by ``angles`` (radians about x, y, z), same shape, zeros outside
    (MONAI ``Rotate``: bilinear for images, nearest for label maps)."""
    from monai.transforms import Rotate

    rotate = Rotate(
        angle=angles, keep_size=True, mode="nearest" if label else "bilinear", padding_mode="zeros"
    )
    out = np.asarray(rotate(torch.as_tensor(np.asarray(array, np.float32))[None])[0])
    return np.round(out).astype(array.dtype) if label else out.astype(np.float32)


def box_on_slice(box3d: list[float], axis: int, k: int, shape: tuple[int, ...]) -> list[float] | None:
    """A voxel box ``[x1, y1, z1, x2, y2, z2]`` (inclusive indices, RAS array) projected on slice ``k``
    of ``axis`` as an image box ``[x1, y1, x2, y2]`` in display pixels; None when the slice misses it."""
    lo, hi = box3d[:3], box3d[3:]
    if not lo[axis] <= k <= hi[axis]:
        return None
    a0, a1 = [i for i in range(3) if i != axis]
    n0, n1 = shape[a0], shape[a1]
    # display column c <-> index n0 - 1 - c along a0; row r <-> n1 - 1 - r along a1
    return [n0 - 1 - hi[a0], n1 - 1 - hi[a1], n0 - lo[a0], n1 - lo[a1]]


@torch.no_grad()
def segment_volume(
    model: nn.Module,
    volume: np.ndarray,
    axis: int = 2,
    batch_size: int = 8,
    boxes: dict[str, Any] | None = None,
    resize_mode: str = "longest_pad",
    normalize_mode: str = "sam",
    threshold: float = 0.5,
    points: dict[str, list[list[float]]] | None = None,
) -> np.ndarray:
    """Label map [X, Y, Z] (0 background, c + 1 = the model's c-th label; overlaps to the likeliest) of a
    uint8 volume, one batched 2D prediction per slice along ``axis``: automatic mode, or prompts in RAS
    voxel indices: ``boxes`` (label -> one box ``[x1, y1, z1, x2, y2, z2]`` or a list of them, e.g. one
    per slice) projected on every slice they cross, and ``points`` (label -> ``[x, y, z]`` or
    ``[x, y, z, 1|0]``) on their slice. With prompts, a class with none on a slice predicts nothing there."""
    if volume.ndim != 3 or not 0 <= axis < 3:
        raise ValueError(f"expected a 3D volume and axis 0-2, got shape {volume.shape} and axis {axis}")
    from medpeft.viz import label_map  # matplotlib: only when a label map is made

    labels = list(model.label_names)
    prompted = bool(boxes) or bool(points)
    out = np.zeros(volume.shape, np.uint16 if len(labels) > 254 else np.uint8)
    model.eval()
    slices = list(range(volume.shape[axis]))
    for start in range(0, len(slices), batch_size):
        ks = slices[start : start + batch_size]
        tensors, metas, prompts, entries = [], [], [], []
        for k in ks:
            image = to_display(np.take(volume, k, axis=axis))
            tensor, meta = model_input(
                np.repeat(image[..., None], 3, -1), model.image_size, resize_mode, normalize_mode
            )
            entry = slice_prompts(boxes, points, axis, k, volume.shape) if prompted else None
            prompt, _ = image_prompts(entry, labels, meta)
            tensors.append(tensor)
            metas.append(meta)
            prompts.append(prompt)
            entries.append(entry or {})
        if prompted:  # one prompt set per slice: prompts differ between slices
            logits = torch.cat(
                [model(t.to(model.device), p.to(model.device)) for t, p in zip(tensors, prompts, strict=True)]
            )
        else:
            logits = model(
                torch.cat(tensors).to(model.device),
                Prompts(class_ids=torch.arange(len(labels)).expand(len(ks), -1)).to(model.device),
            )
        probs = torch.sigmoid(logits).float().cpu()
        for i, k in enumerate(ks):
            prob = undo_resize(probs[i], metas[i], "bilinear").numpy()
            if prompted:  # a class with no prompt on this slice predicts nothing there
                present = set(entries[i].get("boxes", {})) | set(entries[i].get("points", {}))
                prob[[c for c, n in enumerate(labels) if n not in present]] = 0.0
            lab = label_map(prob > threshold, prob)
            index = [slice(None)] * 3
            index[axis] = k
            out[tuple(index)] = from_display(lab)
    return out


def slice_prompts(
    boxes: dict[str, Any] | None,
    points: dict[str, list[list[float]]] | None,
    axis: int,
    k: int,
    shape: tuple[int, ...],
) -> dict[str, Any]:
    """The prompts of slice ``k`` in display pixels (``image_prompts``'s entry layout)."""
    entry: dict[str, Any] = {}
    for name, given in (boxes or {}).items():
        many = given if given and isinstance(given[0], (list, tuple)) else [given]
        hit = next((b for b in (box_on_slice(list(g), axis, k, shape) for g in many) if b is not None), None)
        if hit is not None:
            entry.setdefault("boxes", {})[name] = hit
    a0, a1 = [i for i in range(3) if i != axis]
    for name, pts in (points or {}).items():
        here = [p for p in pts if int(round(p[axis])) == k]
        if here:  # display column c <-> n0 - 1 - a0 index, row r <-> n1 - 1 - a1 index
            entry.setdefault("points", {})[name] = [
                [shape[a0] - 1 - p[a0], shape[a1] - 1 - p[a1], int(p[3]) if len(p) > 3 else 1] for p in here
            ]
    return entry


def mid_slices_picture(
    path: Path, image: np.ndarray, pred: np.ndarray, labels: list[str], truth: np.ndarray | None = None
) -> None:
    """Three orthogonal slices through the middle of the (predicted or true) foreground: prediction filled,
    ground truth outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medpeft.viz import overlay

    ref = truth if truth is not None and truth.any() else pred
    centre = [
        int(round(c.mean())) if len(c) else s // 2 for c, s in zip(np.nonzero(ref), ref.shape, strict=True)
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), dpi=100)
    c = len(labels)
    for ax, axis, name in zip(axes, (2, 1, 0), ("axial", "coronal", "sagittal"), strict=True):
        img = to_display(np.take(image, centre[axis], axis=axis))
        p = to_display(np.take(pred, centre[axis], axis=axis))
        masks = np.stack([p == i + 1 for i in range(c)])
        outline = None
        if truth is not None:
            t = to_display(np.take(truth, centre[axis], axis=axis))
            outline = np.stack([t == i + 1 for i in range(c)])
        ax.imshow(overlay(np.repeat(img[..., None], 3, -1), masks, outline=outline))
        ax.set_title(f"{name} {centre[axis]}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def case_scores(
    pred: np.ndarray, truth: np.ndarray, n_classes: int, spacing: tuple[float, ...]
) -> dict[str, np.ndarray]:
    """Per-class Dice, IoU, ASSD and HD95 (MONAI, mm) of label maps with values 1..n_classes."""
    p = np.stack([pred == i + 1 for i in range(n_classes)])[None]
    t = np.stack([truth == i + 1 for i in range(n_classes)])[None]
    return {
        "dice": dice_per_class(p, t)[0].numpy(),
        "iou": iou_per_class(p, t)[0].numpy(),
        "assd": assd_per_class(p, t, spacing)[0].numpy(),
        "hd95": hd95_per_class(p, t, spacing)[0].numpy(),
    }


def evaluate_volumes(
    model: nn.Module,
    cases: list[tuple[Path, Path | None]],
    table: dict[int, str],
    out_dir: Path,
    axis: int = 2,
    window: str | tuple[float, float] | None = None,
    resize_mode: str = "longest_pad",
    normalize_mode: str = "sam",
    threshold: float = 0.5,
    batch_size: int = 8,
    rotation: tuple[float, float, float] | None = None,
    inference: str = "zoom",
    prompt_modes: list[str] | None = None,
) -> dict[str, Any]:
    """Segment every case and score it in 3D with its spacing: ``per_case.csv``, ``summary.json`` (per-class
    mean/std and the mean over classes) and ``pictures/<case>.png``. The model's labels are matched to the
    dataset's ``table`` by name; others are not scored.

    A 2D model runs slice by slice in automatic mode. A 3D model (SegVol) runs at full resolution by
    ``inference`` (``zoom``: zoom-out-zoom-in, ``sliding``, ``resize``) under each of ``prompt_modes``
    (``text``, ``box``, ``point``, ``text+box``, ...; boxes and points from the ground truth; default
    ``text``): the first mode is the summary's, all of them are compared in ``summary["prompts"]`` and
    ``prompts.png``, with seconds per case.

    ``rotation`` (radians about x, y, z): each case is also rotated with its labels (nearest) and scored
    again (rows with ``rotated`` true); ``summary["rotation"]`` holds per-class Dice original vs rotated
    and the drop, drawn in ``rotation.png``."""
    from medpeft.engine.volume3d import is_volume_model, segment_volume_3d, truth_prompts

    volume_model = is_volume_model(model)
    modes = list(prompt_modes or (["text"] if volume_model else ["auto"]))
    if not volume_model and modes != ["auto"]:
        raise ValueError(f"prompt modes {modes}: a 2D model is scored on volumes in automatic mode only")
    labels = list(model.label_names)
    value_of: dict[str, list[int]] = {}  # several values may carry one name (BRATS' tumour regions)
    for value, name in table.items():
        value_of.setdefault(name, []).append(value)
    scored = [n for n in labels if n in value_of]
    if not scored:
        raise ValueError(
            f"none of the model's labels {labels} is in the dataset's table {sorted(table.values())}"
        )
    rows: list[dict[str, Any]] = []
    for image_path, label_path in cases:
        volume = read_volume(image_path)
        truth_raw = read_volume(label_path, label=True).array if label_path is not None else None
        pixels = to_uint8(volume.array, window)
        case = image_path.name.removesuffix(".gz").removesuffix(".nii")
        truth = np.zeros(pixels.shape, np.uint16)
        if truth_raw is not None:
            if truth_raw.shape != pixels.shape:
                raise ValueError(
                    f"label map {label_path} is {truth_raw.shape} but its image is {pixels.shape}"
                )
            for i, name in enumerate(labels):
                if name in value_of:
                    truth[np.isin(np.round(truth_raw), value_of[name])] = i + 1
        variants = [(False, pixels, truth)]
        if rotation is not None:
            turned = np.clip(np.round(rotate_volume(pixels, rotation)), 0, 255).astype(np.uint8)
            variants.append((True, turned, rotate_volume(truth, rotation, label=True)))
        for (rotated, image, target), mode in itertools.product(variants, modes):
            started = time.perf_counter()
            if volume_model:
                given = truth_prompts(target.transpose(2, 1, 0), labels, mode)
                text = mode == "auto" or "text" in mode
                pred, _ = segment_volume_3d(model, image, given, text, inference, threshold)
            else:
                pred = segment_volume(
                    model, image, axis, batch_size, None, resize_mode, normalize_mode, threshold
                )
            seconds = time.perf_counter() - started
            scores = case_scores(pred, target, len(labels), volume.spacing)
            for c, name in enumerate(labels):
                if name in value_of:
                    rows.append(
                        {
                            "case": case,
                            "label": name,
                            "rotated": rotated,
                            "prompt": mode,
                            **{m: float(scores[m][c]) for m in METRICS},
                            "gt_voxels": int((target == c + 1).sum()),
                            "pred_voxels": int((pred == c + 1).sum()),
                            "seconds": seconds,
                        }
                    )
            if mode == modes[0]:
                suffix = "-rotated" if rotated else ""
                mid_slices_picture(out_dir / "pictures" / f"{case}{suffix}.png", image, pred, labels, target)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "per_case.csv").open("w", newline="") as f:
        fields = ["case", "label", "rotated", "prompt", *METRICS, "gt_voxels", "pred_voxels", "seconds"]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    first = [r for r in rows if r["prompt"] == modes[0]]
    summary = _summary([r for r in first if not r["rotated"]], scored, axis)
    if volume_model:
        summary["inference"] = inference
        summary["prompts"] = {}
        for mode in modes:
            mine = [r for r in rows if r["prompt"] == mode and not r["rotated"]]
            part = _summary(mine, scored, axis)
            summary["prompts"][mode] = {
                "dice": {n: part["per_class"][n]["dice"] for n in scored},
                "mean_dice": part["mean"]["dice"],
                "seconds_per_case": float(np.mean([r["seconds"] for r in mine])) if mine else None,
            }
        if len(modes) > 1:
            prompt_chart(out_dir / "prompts.png", summary["prompts"])
    rows = first  # the rotation comparison is under the first prompt mode
    if rotation is not None:
        turned_summary = _summary([r for r in rows if r["rotated"]], scored, axis)
        summary["rotation"] = {
            "angles_rad": list(rotation),
            **rotation_table(
                {n: summary["per_class"][n]["dice"] for n in scored},
                {n: turned_summary["per_class"][n]["dice"] for n in scored},
            ),
        }
        rotation_chart(out_dir / "rotation.png", summary["rotation"])
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _summary(rows: list[dict[str, Any]], scored: list[str], axis: int) -> dict[str, Any]:
    """Per-class mean/std over cases of each metric, and the mean over classes."""
    cases_seen = sorted({r["case"] for r in rows})
    summary: dict[str, Any] = {
        "cases": len(cases_seen),
        "axis": axis,
        "distance_units": "mm",
        "per_class": {},
        "mean": {},
    }
    for m in METRICS:
        tab = np.full((len(cases_seen), len(scored)), np.nan)
        for r in rows:
            if math.isfinite(r[m]):
                tab[cases_seen.index(r["case"]), scored.index(r["label"])] = r[m]
        stats = summarize(tab, scored)
        for n in scored:
            summary["per_class"].setdefault(n, {})[m] = stats["per_class"][n]["mean"]
            summary["per_class"][n][f"{m}_std"] = stats["per_class"][n]["std"]
        summary["mean"][m] = stats["mean"]
    return summary


def rotation_table(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, Any]:
    """Per-class Dice original vs rotated and the drop, plus their means over classes."""

    def row(a: float | None, b: float | None) -> dict[str, float | None]:
        return {"dice": a, "dice_rotated": b, "drop": None if a is None or b is None else a - b}

    names = list(before)
    mean = lambda d: float(np.mean([d[n] for n in names if d.get(n) is not None])) if names else None  # noqa: E731
    return {
        "per_class": {n: row(before[n], after.get(n)) for n in names},
        "mean": row(mean(before), mean(after)),
    }


def rotation_chart(path: Path, rotation: dict[str, Any], title: str | None = None) -> None:
    """Bars of per-class Dice, original vs rotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rotation["per_class"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names) + 2), 3.5), dpi=100)
    for shift, key, label in ((-0.2, "dice", "original"), (0.2, "dice_rotated", "rotated")):
        ax.bar(x + shift, [rotation["per_class"][n][key] or 0.0 for n in names], 0.4, label=label)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    if title is None:
        degrees = ", ".join(f"{math.degrees(a):.1f}" for a in rotation["angles_rad"])
        title = f"rotated ({degrees}) degrees about x, y, z"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def prompt_chart(path: Path, prompts: dict[str, Any]) -> None:
    """Bars of per-class Dice for each prompt configuration (SegVol's Figure 5 layout)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(prompts)
    names = list(next(iter(prompts.values()))["dice"])
    x = np.arange(len(names))
    width = 0.8 / len(modes)
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names) + 2), 3.5), dpi=100)
    for i, mode in enumerate(modes):
        values = [prompts[mode]["dice"][n] or 0.0 for n in names]
        ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=mode)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.set_title("Dice by prompt", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def format_volume_table(summary: dict[str, Any]) -> str:
    head = f"{'label':<24}{'Dice':>9}{'IoU':>9}{'ASSD mm':>9}{'HD95 mm':>9}"
    how = (
        f"3D, {summary['inference']} inference, {next(iter(summary['prompts']))} prompts"
        if "inference" in summary
        else f"slices along axis {summary['axis']}"
    )
    lines = [f"{summary['cases']} volumes, {how}", head, "-" * len(head)]

    def fmt(v: float | None) -> str:
        return f"{v:9.3f}" if v is not None and math.isfinite(v) else f"{'-':>9}"

    for name, s in summary["per_class"].items():
        lines.append(f"{name[:23]:<24}" + "".join(fmt(s[m]) for m in METRICS))
    lines.append(f"{'mean':<24}" + "".join(fmt(summary["mean"][m]) for m in METRICS))
    if len(summary.get("prompts", {})) > 1:
        lines.append("Dice by prompt (mean over classes; seconds per case):")
        for mode, r in summary["prompts"].items():
            lines.append(f"{mode[:23]:<24}{fmt(r['mean_dice'])}  ({r['seconds_per_case']:.2f} s)")
    if "rotation" in summary:
        rot = summary["rotation"]
        degrees = ", ".join(f"{math.degrees(a):.1f}" for a in rot["angles_rad"])
        lines.append(f"rotated by ({degrees}) degrees about x, y, z: Dice original -> rotated (drop)")
        for name, r in [*rot["per_class"].items(), ("mean", rot["mean"])]:
            lines.append(
                f"{name[:23]:<24}{fmt(r['dice'])} ->{fmt(r['dice_rotated'])}  ({fmt(r['drop']).strip()})"
            )
    return "\n".join(lines)


def predict_volume_file(
    model: nn.Module,
    path: Path,
    out_dir: Path,
    axis: int = 2,
    window: str | tuple[float, float] | None = None,
    prompts: dict[str, Any] | None = None,
    resize_mode: str = "longest_pad",
    normalize_mode: str = "sam",
    threshold: float = 0.5,
    inference: str = "zoom",
    text: bool | None = None,
) -> dict[str, Any]:
    """Segment one volume file and write ``volumes/<name>.nii.gz`` (input grid and affine, label table
    beside it) and ``pictures/<name>.png``; returns its ``predictions.json`` entry. A 3D model runs by
    ``inference`` with text prompts (``text``; default: unless boxes or points are given)."""
    from medpeft.data.volume_io import write_label_volume
    from medpeft.engine.volume3d import is_volume_model, ras_prompts, segment_volume_3d

    volume: Volume = read_volume(path)
    pixels = to_uint8(volume.array, window)
    prompts = prompts or {}
    info: dict[str, Any] = {}
    if is_volume_model(model):  # text (label names) unless only boxes / points were given, as SegVol
        given = ras_prompts(prompts.get("boxes"), prompts.get("points"))
        text = text if text is not None else not (prompts.get("boxes") or prompts.get("points"))
        labels_3d, info = segment_volume_3d(model, pixels, given, text, inference, threshold)
        info["text"] = text
    else:
        labels_3d = segment_volume(
            model,
            pixels,
            axis,
            8,
            prompts.get("boxes"),
            resize_mode,
            normalize_mode,
            threshold,
            prompts.get("points"),
        )
    name = path.name.removesuffix(".gz").removesuffix(".nii")
    table = {i + 1: n for i, n in enumerate(model.label_names)}
    write_label_volume(out_dir / "volumes" / f"{name}.nii.gz", labels_3d, volume, table)
    mid_slices_picture(out_dir / "pictures" / f"{name}.png", pixels, labels_3d, list(model.label_names))
    return {
        "volume": str(path),
        "labels": f"volumes/{name}.nii.gz",
        "picture": f"pictures/{name}.png",
        "prompt_mode": "+".join(
            (["text"] if info.get("text") else []) + [k for k in ("boxes", "points") if prompts.get(k)]
        )
        or "auto",
        **info,
        "voxels": {n: int((labels_3d == i + 1).sum()) for i, n in enumerate(model.label_names)},
        "spacing": list(volume.spacing),
    }
