"""Read a 2D dataset in whichever layout it has: a folder of images + masks, or SAM-Med2D's json."""

from __future__ import annotations

from pathlib import Path

from .formats.folder import read_folder_dataset
from .formats.landmarks import is_landmark_layout, read_landmark_dataset
from .formats.sammed2d import find_sammed2d_jsons, read_sammed2d_folder, read_sammed2d_json
from .io import DataError
from .records import ImageRecord

FORMATS = ("auto", "folder", "sammed2d", "landmarks")


def detect_format(root: Path) -> str:
    """``"sammed2d"`` when ``root`` holds a SAM-Med2D json, ``"landmarks"`` for a landmark layout
    (:func:`is_landmark_layout`), else ``"folder"``."""
    if find_sammed2d_jsons(root):
        return "sammed2d"
    return "landmarks" if is_landmark_layout(root) else "folder"


def read_dataset(
    root: Path,
    format: str = "auto",
    labels: list[str] | None = None,
    check_sizes: bool | None = None,
    line_width: int = 1,
    colour_tolerance: float = 100.0,
) -> tuple[list[ImageRecord], list[str]]:
    """Read a dataset folder (``format``: one of :data:`FORMATS`) or a SAM-Med2D json file;
    ``line_width`` and ``colour_tolerance`` apply to landmark curves."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".json":
        return read_sammed2d_json(root, labels=labels, check_sizes=check_sizes)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    if format == "auto":
        format = detect_format(root)
    if format == "folder":
        return read_folder_dataset(root, labels, check_sizes)
    if format == "sammed2d":
        return read_sammed2d_folder(root, labels, check_sizes)
    if format == "landmarks":
        return read_landmark_dataset(root, labels, line_width, colour_tolerance)
    raise DataError(f"unknown dataset format {format!r}; expected one of {', '.join(FORMATS)}")
