"""3D volumes (NIfTI, DICOM series) and cutting them into a 2D folder dataset.

Volumes are returned in RAS+ axis order (read by MONAI through :mod:`medpeft.data.volume_io`: x towards the
patient's right, y anterior, z superior), so axis 2 is axial. Exported slices are shown
in the radiological convention: anterior at the top, the patient's right on the image's left.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .io import DataError


def _volume_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_volume(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """(array [X, Y, Z] in RAS, voxel spacing in mm) of a NIfTI file or a DICOM series folder, read by
    :func:`medpeft.data.volume_io.read_volume` (MONAI): one reader for every volume medpeft opens."""
    from .volume_io import read_volume

    volume = read_volume(Path(path))
    return volume.array, volume.spacing


def window(ct: np.ndarray, level: float, width: float) -> np.ndarray:
    """CT windowing: [level - width/2, level + width/2] -> uint8 0-255."""
    lo = level - width / 2.0
    out = (np.asarray(ct, np.float32) - lo) * (255.0 / width)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def scale_percentile(volume: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Robust min-max scaling of a volume to uint8 between two intensity percentiles."""
    v = np.asarray(volume, np.float32)
    lo, hi = np.percentile(v, [low, high])
    if hi <= lo:
        return np.zeros(v.shape, np.uint8)
    return np.clip(np.round((v - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def to_display(slice2d: np.ndarray) -> np.ndarray:
    """RAS (first axis x, second y) slice -> image rows anterior-first, columns patient-right-first."""
    return np.ascontiguousarray(slice2d[::-1, ::-1].T)


def from_display(image: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_display` on the last two axes."""
    return np.ascontiguousarray(np.swapaxes(image, -1, -2)[..., ::-1, ::-1])


def export_slices(
    volume_path: Path,
    label_path: Path,
    out_dir: Path,
    labels: dict[int, str],
    axis: int = 2,
    step: int = 1,
    min_foreground_pixels: int = 50,
    window: tuple[float, float] | None = None,
    min_label_pixels: int = 0,
    max_slices: int | None = None,
    groups: dict[str, list[int]] | None = None,
    stem: str | None = None,
) -> list[Path]:
    """Cut a volume + label map into a 2D folder dataset (``images/``, ``masks/``, ``labels.json``, ``spacing.json``).

    Keeps every ``step``-th slice along ``axis`` whose selected labels (``labels``: value -> name)
    cover at least ``min_foreground_pixels`` pixels; other label values become background, and a
    label with fewer than ``min_label_pixels`` pixels in a slice is dropped from it. ``window``
    (level, width) maps CT values to 0-255; None scales by the 0.5-99.5 percentiles of the volume.
    ``max_slices`` keeps that many, evenly spaced. ``groups`` (name -> values) replaces ``labels``:
    each group's values become one label (e.g. BRATS whole tumour = values 1-4), numbered 1, 2, ...
    in order. ``stem`` names the slices (default: the volume's file name). Returns the written image paths.
    """
    volume_path, label_path, out_dir = Path(volume_path), Path(label_path), Path(out_dir)
    vol, spacing = load_volume(volume_path)
    seg, _ = load_volume(label_path)
    if vol.ndim == 4:  # multi-channel / multi-echo: first channel
        vol = vol[..., 0]
    if vol.shape[:3] != seg.shape[:3]:
        raise DataError(f"label map {label_path} is {seg.shape} but volume {volume_path} is {vol.shape}")
    if not labels and not groups:
        raise DataError("export_slices needs at least one label (value -> name)")
    if not 0 <= axis < 3:
        raise DataError(f"axis must be 0, 1 or 2, got {axis}")
    seg = np.asarray(seg).astype(np.int64)
    if groups is not None:
        seg, labels = _group_labels(seg, groups, label_path)
    keep = np.isin(seg, list(labels))
    seg = np.where(keep, seg, 0)
    pixels = _to_uint8_volume(vol, window)  # ``window`` is the (level, width) argument here

    chosen = []
    for k in range(0, vol.shape[axis], step):
        lab = np.take(seg, k, axis=axis)
        if min_label_pixels > 0:
            for v in labels:
                m = lab == v
                if 0 < m.sum() < min_label_pixels:
                    lab = np.where(m, 0, lab)
        if int((lab > 0).sum()) >= min_foreground_pixels:
            chosen.append((k, lab))
    if not chosen:
        raise DataError(
            f"no slice of {label_path} along axis {axis} has >= {min_foreground_pixels} pixels of {sorted(labels.values())}"
        )
    if max_slices is not None and len(chosen) > max_slices:
        picks = np.unique(np.linspace(0, len(chosen) - 1, max_slices).round().astype(int))
        chosen = [chosen[i] for i in picks]

    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    in_plane = [spacing[i] for i in range(3) if i != axis]  # (first, second) stored axes
    row_col = (float(in_plane[1]), float(in_plane[0]))  # _display transposes
    mask_dtype = np.uint8 if max(labels) < 256 else np.uint16
    stem = stem or _volume_stem(volume_path)
    written, spacing_table = [], {}
    for k, lab in chosen:
        name = f"{stem}_{'xyz'[axis]}{k:03d}"
        img_path = out_dir / "images" / f"{name}.png"
        Image.fromarray(to_display(np.take(pixels, k, axis=axis))).save(img_path, optimize=True)
        Image.fromarray(to_display(lab).astype(mask_dtype)).save(
            out_dir / "masks" / f"{name}.png", optimize=True
        )
        spacing_table[name] = list(row_col)
        written.append(img_path)
    _merge_json(out_dir / "labels.json", {str(v): n for v, n in sorted(labels.items())})
    _merge_json(out_dir / "spacing.json", spacing_table)
    return written


def _group_labels(
    seg: np.ndarray, groups: dict[str, list[int]], source: Path
) -> tuple[np.ndarray, dict[int, str]]:
    """Remap a label map so group i's values become value i + 1 (everything else 0)."""
    out = np.zeros_like(seg)
    seen: dict[int, str] = {}
    for i, (name, values) in enumerate(groups.items()):
        for v in values:
            if v in seen:
                raise DataError(f"label value {v} of {source} is in two labels: {seen[v]!r} and {name!r}")
            seen[v] = name
        out[np.isin(seg, values)] = i + 1
    return out, {i + 1: name for i, name in enumerate(groups)}


def _to_uint8_volume(vol: np.ndarray, win: tuple[float, float] | None) -> np.ndarray:
    return window(vol, *win) if win is not None else scale_percentile(vol)


def _merge_json(path: Path, entries: dict[str, object]) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(entries)
    path.write_text(json.dumps(data, indent=1, sort_keys=path.name != "labels.json") + "\n")
