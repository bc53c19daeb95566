"""Volumes in and out through MONAI: NIfTI or a DICOM series read with its geometry, reoriented to RAS,
optionally resampled to a spacing, mapped to 0-255 with a CT window preset or MR percentiles; label maps
written back as NIfTI on the input's own grid and affine, with a label table beside them.

MONAI does the reading (``LoadImage``: nibabel / pydicom), the reorientation (``Orientation``), the
resampling (``Spacing``) and the intensity maps; writing uses nibabel with the input's header.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from .io import DataError
from .labels import parse_labels_json

# CT (level, width) presets in HU
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
VOLUME_SUFFIXES = (".nii.gz", ".nii")
# MONAI's GPU DICOM decoder announces its absence on every read; the CPU decoder is the one used here
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)


@dataclass
class Volume:
    """``array`` [X, Y, Z] in RAS order, ``affine`` (voxel -> RAS mm) of that array, ``spacing`` (mm),
    and the ``source`` file whose grid predictions are written back on."""

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    source: Path


def read_volume(path: Path, spacing: tuple[float, float, float] | None = None, label: bool = False) -> Volume:
    """Read with MONAI (``LoadImage``), reorient to RAS (``Orientation``) and, given ``spacing``,
    resample (``Spacing``: bilinear, nearest for a ``label`` map). Multi-channel volumes keep channel 0."""
    from monai.transforms import LoadImage, Orientation, Spacing

    path = Path(path)
    if not path.exists():
        raise DataError(f"volume not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
            image = Orientation(axcodes="RAS", labels=None)(image[:1])
            if spacing is not None:
                image = Spacing(pixdim=spacing, mode="nearest" if label else "bilinear")(image)
    except Exception as e:  # MONAI wraps the readers' many error types
        raise DataError(f"cannot read volume {path}: {str(e).splitlines()[0]}") from None
    affine = np.asarray(image.affine, np.float64)
    zooms = tuple(float(round(v, 6)) for v in np.linalg.norm(affine[:3, :3], axis=0))
    return Volume(np.asarray(image[0]), affine, zooms, path)  # type: ignore[arg-type]


def to_uint8(volume: np.ndarray, window: str | tuple[float, float] | None = None) -> np.ndarray:
    """Intensities -> uint8: a CT window (preset name or (level, width) in HU) through MONAI's
    ``ScaleIntensityRange``; ``"zscore"`` (MR: ``NormalizeIntensity`` over non-zero voxels, +-3 std);
    or, with None, the 0.5-99.5 percentiles (MR) through ``ScaleIntensityRangePercentiles``."""
    from monai.transforms import ScaleIntensityRange, ScaleIntensityRangePercentiles

    x = torch.as_tensor(np.asarray(volume, np.float32))[None]
    if window == "zscore":  # MR: mean 0, std 1 over the non-zero (body) voxels, then +-3 std -> 0-255
        from monai.transforms import NormalizeIntensity

        scaled = ScaleIntensityRange(-3.0, 3.0, 0.0, 255.0, clip=True)(NormalizeIntensity(nonzero=True)(x))
    elif window is None:
        scaled = ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 255.0, clip=True)(x)
    else:
        if isinstance(window, str):
            if window not in CT_WINDOWS:
                raise DataError(f"unknown CT window {window!r}; presets: {', '.join(CT_WINDOWS)}")
            window = CT_WINDOWS[window]
        level, width = window
        scaled = ScaleIntensityRange(level - width / 2, level + width / 2, 0.0, 255.0, clip=True)(x)
    return np.round(np.asarray(scaled[0])).astype(np.uint8)


def write_label_volume(path: Path, labels: np.ndarray, like: Volume, table: dict[int, str]) -> Path:
    """Write a RAS label map (on ``like``'s RAS grid, not resampled) as NIfTI on the grid and affine of
    ``like.source`` (orientation undone), plus ``<name>.labels.json`` (value -> name)."""
    source = nib.load(str(like.source)) if like.source.is_file() else None
    data = np.asarray(labels)
    data = data.astype(np.uint8 if data.max(initial=0) < 256 else np.uint16)
    if source is not None:
        original = nib.io_orientation(source.affine)
        ras_to_original = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), original)
        data = nib.orientations.apply_orientation(data, ras_to_original)
        if data.shape != source.shape[:3]:
            raise DataError(f"label map {data.shape} does not fit {like.source} {source.shape[:3]}")
        image = nib.Nifti1Image(data, source.affine)
        image.header.set_qform(source.affine, code=1)
    else:  # a DICOM series: the RAS grid's own affine
        image = nib.Nifti1Image(data, like.affine)
    image.header.set_sform(image.affine, code=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    stem = path.name.removesuffix(".gz").removesuffix(".nii")
    (path.parent / f"{stem}.labels.json").write_text(
        json.dumps({str(k): v for k, v in sorted(table.items())}, indent=1)
    )
    return path


def _to_ras(index: list[float], shape: tuple[int, ...], ornt: np.ndarray) -> list[float]:
    """Voxel indices of a file as stored -> indices of its RAS-reoriented array."""
    ras = [0.0] * 3
    for i, (ras_axis, flip) in enumerate(ornt):
        ras[int(ras_axis)] = shape[i] - 1 - index[i] if flip < 0 else index[i]
    return ras


def read_volume_prompts(path: Path, volumes: list[Path], labels: list[str]) -> dict[Path, dict[str, Any]]:
    """Prompts per volume from JSON, in voxel indices of each file as stored, converted to the RAS
    array's indices::

        {"<file name>": {"boxes": {"<label>": [x1, y1, z1, x2, y2, z2] or a list of such boxes
                                   (one per slice: z1 == z2)},
                         "points": {"<label>": [[x, y, z], [x, y, z, 0], ...]}}}   # 1 positive, 0 negative

    Checked before anything runs (one line naming the file, volume and label): unknown files, keys or
    labels, malformed, inverted or out-of-volume boxes and points."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"--prompts {path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f'--prompts {path}: expected {{"<volume file>": {{"boxes": ..., "points": ...}}}}')
    by_name = {v.name: v for v in volumes}
    out: dict[Path, dict[str, Any]] = {}
    for name, entry in data.items():
        if name not in by_name:
            raise DataError(f"--prompts {path}: {name!r} is not one of the input volumes")
        if not isinstance(entry, dict) or not entry or set(entry) - {"boxes", "points"}:
            raise DataError(f'--prompts {path}: {name}: expected {{"boxes": {{...}}, "points": {{...}}}}')
        image = nib.load(str(by_name[name]))
        shape, ornt = image.shape[:3], nib.io_orientation(image.affine)

        converted: dict[str, Any] = {}
        for kind in ("boxes", "points"):
            given = entry.get(kind, {})
            if not isinstance(given, dict):
                raise DataError(f"--prompts {path}: {name}: {kind} must map labels to {kind}")
            for label, value in given.items():
                where = f"--prompts {path}: {name}: {kind} {label}"
                if label not in labels:
                    raise DataError(f"{where}: unknown label; the model's labels: {labels}")
                items = value if value and isinstance(value[0], list) else [value]
                parsed = []
                for item in items:
                    n = (6,) if kind == "boxes" else (3, 4)
                    if not (
                        isinstance(item, list)
                        and len(item) in n
                        and all(isinstance(v, (int, float)) for v in item)
                    ):
                        expected = (
                            "6 voxel indices [x1, y1, z1, x2, y2, z2]"
                            if kind == "boxes"
                            else "[x, y, z] or [x, y, z, 1|0]"
                        )
                        raise DataError(f"{where}: {item!r}: expected {expected}")
                    lo, hi = (item[:3], item[3:]) if kind == "boxes" else (item[:3], item[:3])
                    if (
                        any(a > b for a, b in zip(lo, hi, strict=True))
                        or min(lo) < 0
                        or any(b > n_ - 1 for b, n_ in zip(hi, shape, strict=True))
                    ):
                        raise DataError(f"{where}: {item} is inverted or leaves the volume {tuple(shape)}")
                    if kind == "points" and len(item) == 4 and item[3] not in (0, 1):
                        raise DataError(
                            f"{where}: {item}: the point label must be 1 (positive) or 0 (negative)"
                        )
                    if kind == "boxes":
                        a, b = _to_ras(lo, shape, ornt), _to_ras(hi, shape, ornt)
                        parsed.append([*np.minimum(a, b).tolist(), *np.maximum(a, b).tolist()])
                    else:
                        parsed.append([*_to_ras(lo, shape, ornt), *item[3:]])
                converted.setdefault(kind, {})[label] = parsed
        out[by_name[name]] = converted
    return out


def read_msd(root: Path) -> tuple[list[tuple[Path, Path | None]], dict[int, str], dict[str, str]]:
    """An MSD / nnU-Net dataset: ``dataset.json`` -> (cases (image, label or None), label table without
    background, modalities). Paths in ``training`` are relative to ``root``; nnU-Net v2's
    ``channel_names`` / name -> value ``labels`` are read too."""
    root = Path(root)
    meta = root / "dataset.json"
    try:
        data = json.loads(meta.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{root}: no dataset.json (an MSD / nnU-Net dataset has imagesTr/, labelsTr/, dataset.json)"
        ) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{meta}: not valid JSON ({e})") from None
    table = parse_labels_json(meta)  # MSD value -> name or nnU-Net v2 name -> value, under "labels"
    modalities = {
        str(k): str(v) for k, v in (data.get("modality") or data.get("channel_names") or {}).items()
    }
    cases = []
    for i, entry in enumerate(data.get("training") or []):
        try:
            image = root / str(entry["image"]).removeprefix("./")
        except (KeyError, TypeError):
            raise DataError(f"{meta}: training[{i}] has no 'image'") from None
        label = root / str(entry["label"]).removeprefix("./") if entry.get("label") else None
        for p in (image, label):
            if p is not None and not p.exists():
                raise DataError(f"{meta}: training[{i}] names {p}, which does not exist")
        cases.append((image, label))
    if not cases:
        raise DataError(f"{meta}: 'training' lists no cases")
    return cases, table, modalities


def read_volume_dataset(
    root: Path,
    split: str | None = None,
    image_glob: str | None = None,
    label_map: str | None = None,
    label_table: Path | None = None,
) -> tuple[list[tuple[Path, Path | None]], dict[int, str]]:
    """Cases and label table of a volume dataset: MSD / nnU-Net (``dataset.json``), or ``images/`` +
    ``labels/`` with the same file names, ``labels.json`` (value -> name; default ``{1: foreground}``)
    and optional ``<split>.list`` files of case names (ACDC). ``split`` keeps one list's cases.

    Subject folders (BRATS): ``image_glob`` (relative to ``root``, e.g. ``*/*/Flair*.nii.gz``) with
    ``label_map`` (``{dir}`` and ``{stem}``: the image's folder and name, e.g. ``{dir}/OTMultiClass.nii.gz``)
    and ``label_table`` (a labels.json; default ``{1: foreground}``)."""
    root = Path(root)
    if image_glob is not None:
        images = sorted(p for p in root.glob(image_glob) if p.name.lower().endswith(VOLUME_SUFFIXES))
        if not images:
            raise DataError(f"{root}: the pattern {image_glob!r} matches no .nii / .nii.gz volume")
        if label_map is None:
            raise DataError("subject folders need a label map pattern, e.g. '{dir}/OTMultiClass.nii.gz'")
        cases = []
        for image in images:
            stem = image.name.removesuffix(".gz").removesuffix(".nii")
            label = Path(label_map.format(dir=image.parent, stem=stem))
            if not label.is_file():
                raise DataError(f"label map {label} (for {image}) not found")
            cases.append((image, label))
        table = {1: "foreground"}
        if label_table is not None:
            table = parse_labels_json(Path(label_table))
        return cases, table
    if (root / "dataset.json").is_file():
        cases, table, _ = read_msd(root)
    elif (root / "images").is_dir():
        images = sorted(p for p in (root / "images").iterdir() if p.name.lower().endswith(VOLUME_SUFFIXES))
        if not images:
            raise DataError(f"{root / 'images'}: no .nii / .nii.gz volumes")
        labels_dir = root / "labels"
        cases = [(p, labels_dir / p.name if (labels_dir / p.name).is_file() else None) for p in images]
        table = {1: "foreground"}
        if (root / "labels.json").is_file():
            table = parse_labels_json(root / "labels.json")
    else:
        raise DataError(f"{root}: not a volume dataset (dataset.json, or images/ + labels/ of NIfTI files)")
    if split is not None:
        listing = root / f"{split}.list"
        if not listing.is_file():
            raise DataError(f"{root}: no {listing.name} to select the {split!r} split from")
        wanted = {line.strip() for line in listing.read_text().splitlines() if line.strip()}
        cases = [c for c in cases if c[0].name.removesuffix(".gz").removesuffix(".nii") in wanted]
        if not cases:
            raise DataError(f"{listing}: names no case of {root}")
    return cases, table


def check_volume_dataset(root: Path, **layout: Any) -> tuple[int, list[str]]:
    """Integrity check in the spirit of nnU-Net's ``--verify_dataset_integrity``: every image and label
    readable, same shape, same affine (1e-3), label values within the table, no empty label map, every
    label present somewhere. ``layout``: :func:`read_volume_dataset`'s subject-folder options. Returns
    (cases checked, one line per problem)."""
    cases, table = read_volume_dataset(root, **layout)
    problems: list[str] = []
    seen: set[int] = set()
    for image_path, label_path in cases:
        try:
            image = nib.load(str(image_path))
            shape, affine = image.shape[:3], image.affine
        except Exception as e:  # nibabel raises many types for broken files
            problems.append(f"{image_path}: unreadable ({str(e).splitlines()[0]})")
            continue
        if label_path is None:
            problems.append(f"{image_path}: no label map")
            continue
        try:
            label = nib.load(str(label_path))
            values = np.unique(np.asarray(label.dataobj)).astype(np.int64)
        except Exception as e:
            problems.append(f"{label_path}: unreadable ({str(e).splitlines()[0]})")
            continue
        if label.shape[:3] != shape:
            problems.append(f"{label_path}: shape {label.shape[:3]} differs from its image's {shape}")
        elif not np.allclose(label.affine, affine, atol=1e-3):
            problems.append(f"{label_path}: affine differs from its image's (origin or spacing or direction)")
        unknown = sorted(set(values.tolist()) - set(table) - {0})
        if unknown:
            problems.append(f"{label_path}: label values {unknown} are not in the table {sorted(table)}")
        if not (values > 0).any():
            problems.append(f"{label_path}: empty (no foreground voxel)")
        seen |= set(values.tolist())
    for value, name in sorted(table.items()):
        if value not in seen:
            problems.append(f"{root}: label {value} ({name}) appears in no label map")
    return len(cases), problems
