"""Prediction on new images: PNG label maps and overlays, with box/point prompts from JSON or automatic mode,
or 16-bit depth maps and pictures for a depth model.

The output folder holds the task's folders (``masks/`` + ``overlays/``, or ``depth/`` + ``pictures/``) and
``predictions.json``; the latter carries the marker
``"format": "medpeft-predictions"`` so that a later run can tell a medpeft output folder (which
``overwrite=True`` may replace) from anything else (which it never deletes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from medpeft.data.io import IMAGE_EXTENSIONS, DataError, load_image, one_line
from medpeft.engine.checkpoint import atomic_write_json
from medpeft.tasks.base import PredictionWriter

# Marker in predictions.json: this folder is a medpeft prediction output.
OUTPUT_FORMAT = "medpeft-predictions"
_OUTPUT_DIRS = ("masks", "overlays", "depth", "pictures", "volumes")
_OUTPUT_SUFFIXES = {"volumes": (".nii.gz", ".labels.json")}  # what each folder may hold (default .png)
_OUTPUT_FILES = ("strip.png",)  # written across all images (a depth run's frame strip)
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
    writer: PredictionWriter,
    prompt_file: Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
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
    out_dir = Path(out_dir)
    images = list_images(Path(inputs))
    stale = check_output_dir(out_dir, overwrite, images)
    prompt_data = writer.read_prompts(prompt_file, labels, images)
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
            report["failed"].append({"image": str(path), "error": one_line(e)})
            continue
        entry = prompt_data.get(path.name, prompt_data.get(path.stem))
        report["images"].append(
            {"image": str(path), **writer.write(model, image, entry, out_dir, names[path])}
        )
    report.update(writer.finish(out_dir, report))
    report["complete"] = True
    _write_report(out_dir, report)
    return report
