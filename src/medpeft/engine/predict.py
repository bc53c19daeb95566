"""Prediction on new images: PNG label maps and overlays, with box/point prompts from JSON or automatic mode,
or 16-bit depth maps and pictures for a depth model.

The output folder holds the task's folders (``masks/`` + ``overlays/``, or ``depth/`` + ``pictures/``) and
``predictions.json``; the latter carries the marker
``"format": "medpeft-predictions"`` so that a later run can tell a medpeft output folder (which
``overwrite=True`` may replace) from anything else (which it never deletes).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from medpeft.data.io import IMAGE_EXTENSIONS, DataError, load_image, one_line
from medpeft.data.volume_io import VOLUME_SUFFIXES
from medpeft.engine.checkpoint import atomic_write_json
from medpeft.tasks.base import PredictionWriter

# Marker in predictions.json: this folder is a medpeft prediction output.
OUTPUT_FORMAT = "medpeft-predictions"
_OUTPUT_DIRS = ("masks", "overlays", "depth", "pictures", "volumes")
_OUTPUT_SUFFIXES = {"volumes": (".nii.gz", ".labels.json")}  # what each folder may hold (default .png)
_OUTPUT_FILES = ("strip.png", "predictions.csv")  # written across all inputs (a depth strip, the summary)
_REPORT = "predictions.json"
# What a broken or unreadable input file raises while it is decoded; such a file is skipped, not fatal.
_UNREADABLE = (DataError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def is_volume(path: Path) -> bool:
    """A NIfTI volume (else a 2D image)."""
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def list_images(path: Path) -> list[Path]:
    """The inputs of a batch: a single file; every image and NIfTI volume in a folder (sorted); or the files
    a ``.txt`` list names, one per line (relative to the list's folder; ``#`` starts a comment)."""
    if path.is_file() and path.suffix.lower() == ".txt":
        files = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            entry = line.split("#", 1)[0].strip()
            if entry:
                file = (path.parent / entry).expanduser()
                if not file.is_file():
                    raise DataError(f"{path}, line {n}: {entry} is not a file")
                files.append(file)
        if not files:
            raise DataError(f"{path}: lists no file")
        return files
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS or is_volume(p))
        if files:
            return files
        raise DataError(
            f"{path}: no images or volumes found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, .nii, .nii.gz)"
        )
    raise DataError(f"{path}: no such file or folder")


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
        ours = entry.name in (_REPORT, *_OUTPUT_FILES) or entry.name.startswith(f".tmp-{_REPORT}-")
        if ours and entry.is_file() and not entry.is_symlink():
            stale.append(entry)
            continue
        if entry.name in _OUTPUT_DIRS and entry.is_dir() and not entry.is_symlink():
            files = sorted(entry.iterdir())
            allowed = _OUTPUT_SUFFIXES.get(entry.name, (".png",))
            odd = [
                f for f in files if f.is_symlink() or not f.is_file() or not f.name.lower().endswith(allowed)
            ]
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
    writer: PredictionWriter | None,
    prompt_file: Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    volume_fn: Callable[[Path], dict[str, Any]] | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """Predict every input (2D images and NIfTI volumes, mixed) and write what the task writes
    (segmentation: ``masks/<stem>.png`` and ``overlays/<stem>.png``; depth: ``depth/<stem>.png`` and
    ``pictures/<stem>.png``; volumes through ``volume_fn``: ``volumes/<name>.nii.gz``), plus
    ``predictions.json`` and ``predictions.csv`` (file, kind, status, seconds, error, pixels or voxels per
    label). ``writer`` is None for a model that takes volumes only.

    Inputs, prompts and the output folder are checked before anything is written (one-line
    :class:`DataError`). An input that cannot be read (or that this model cannot take) is skipped and
    listed under ``failed`` in the returned report, which is also written to ``predictions.json``
    (``{"format", "labels", "images", "volumes", "failed", "complete"}``).
    """
    labels = list(getattr(model, "label_names", []))
    out_dir = Path(out_dir)
    files = list_images(Path(inputs))
    images = [p for p in files if not is_volume(p)]
    stale = check_output_dir(out_dir, overwrite, files)
    prompt_data = writer.read_prompts(prompt_file, labels, images) if writer is not None and images else {}
    clear_output(stale)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "format": OUTPUT_FORMAT,
        "task": task or (writer.task if writer is not None else "segmentation"),
        "complete": False,
        "labels": labels,
        "images": [],
        "volumes": [],
        "failed": [],
        **(writer.describe(model) if writer is not None else {}),
    }
    _write_report(out_dir, report)  # marks the folder as ours at once, so an interrupted run can be replaced
    names = _output_names(images)
    rows: list[dict[str, Any]] = []
    model.eval()
    for path in tqdm(files, desc="predict", unit="file", disable=not progress):
        started = time.perf_counter()
        kind = "volume" if is_volume(path) else "image"
        try:
            if kind == "volume":
                if volume_fn is None:
                    raise DataError(f"{path.name}: a {report['task']} model takes 2D images, not volumes")
                entry = volume_fn(path)
                report["volumes"].append(entry)
            else:
                if writer is None:
                    raise DataError(f"{path.name}: a 3D model takes NIfTI volumes, not 2D images")
                image = load_image(path)
        except _UNREADABLE as e:
            report["failed"].append({"image": str(path), "error": one_line(e)})
            rows.append({"file": str(path), "kind": kind, "status": "failed", "error": one_line(e)})
            continue
        if kind == "image":  # a failure past reading the file (a depth map it names) stops the run
            prompt = prompt_data.get(path.name, prompt_data.get(path.stem))
            entry = {"image": str(path), **writer.write(model, image, prompt, out_dir, names[path])}
            report["images"].append(entry)
        counts = entry.get("pixels") or entry.get("voxels") or {}
        rows.append(
            {"file": str(path), "kind": kind, "status": "ok", **{f"n_{k}": v for k, v in counts.items()}}
        )
        rows[-1]["seconds"] = round(time.perf_counter() - started, 3)
    report.update(writer.finish(out_dir, report) if writer is not None else {})
    _write_summary(out_dir / "predictions.csv", rows, labels)
    report["complete"] = True
    _write_report(out_dir, report)
    return report


def _write_summary(path: Path, rows: list[dict[str, Any]], labels: list[str]) -> None:
    """One row per input: file, kind, status, seconds, error and the pixels (or voxels) of each label."""
    fields = ["file", "kind", "status", "seconds", "error", *(f"n_{n}" for n in labels)]
    with path.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        out.writeheader()
        out.writerows(rows)
