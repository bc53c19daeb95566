"""The landmark layout: frames with their anatomical curves (laparoscopic liver: ridge, ligament,
silhouette) -> ``ImageRecord`` lists, read by :mod:`medpeft.data.landmarks`.

Layout (``read_landmark_dataset``)::

    root/images/<stem>.jpg|png|...
    root/masks/<stem>[_GT].jpg|png          # P2ILF: every curve drawn in its colour (red, blue, yellow)
    root/contours/<stem>.xml                # or P2ILF contour XML (drawn here)
    root/masks/<class>/<stem>.png           # or L3D: one binary mask per landmark class
    root/depth/<stem>.png|npy|tif           # optional: a depth map of the frame (depth-guided models)
    root/acquisition-camera-metadata.json   # optional: camera intrinsics of every frame (P2ILF)
    root/intrinsics/<stem>.json             # optional: per-frame intrinsics (same keys)

Each frame needs exactly one annotation; ``line_width`` widens the one-pixel curves into bands.
"""

from __future__ import annotations

from pathlib import Path

from ..depth import depth_beside
from ..io import DataError, image_files
from ..labels import select_labels
from ..landmarks import LANDMARK_COLOURS, CameraIntrinsics, read_intrinsics
from ..records import ImageRecord

CAMERA_FILE = "acquisition-camera-metadata.json"
GT_SUFFIX = "_GT"  # P2ILF names a frame's contour drawing <stem>_GT.jpg


def is_landmark_layout(root: Path) -> bool:
    """Whether ``root`` looks like a landmark dataset (contour XMLs, class sub-folders of masks, or a
    P2ILF camera file)."""
    masks = root / "masks"
    class_dirs = masks.is_dir() and any(p.is_dir() for p in masks.iterdir())
    return (root / "contours").is_dir() or class_dirs or (root / CAMERA_FILE).is_file()


def read_landmark_dataset(
    root: Path, labels: list[str] | None = None, line_width: int = 1, colour_tolerance: float = 100.0
) -> tuple[list[ImageRecord], list[str]]:
    """Read a landmark dataset (see the module doc); ``labels`` selects classes (default: all three)."""
    root = Path(root)
    images = image_files(root / "images") if (root / "images").is_dir() else {}
    if not images:
        raise DataError(f"empty landmark dataset: no images in {root / 'images'}")
    masks = root / "masks"
    class_dirs = sorted(p for p in masks.iterdir() if p.is_dir()) if masks.is_dir() else []
    names = [p.name for p in class_dirs] or list(LANDMARK_COLOURS)
    label_names = select_labels(names, labels, str(root))
    per_class = {p.name: image_files(p) for p in class_dirs if p.name in label_names}
    drawings = {k.removesuffix(GT_SUFFIX): v for k, v in image_files(masks).items()} if masks.is_dir() else {}
    xmls = image_files(root / "contours", (".xml",)) if (root / "contours").is_dir() else {}
    depths = depth_beside(root, images)
    records = []
    for stem, image in images.items():
        found = [d for d in (drawings.get(stem), xmls.get(stem)) if d is not None]
        class_masks = {n: f[stem] for n, f in per_class.items() if stem in f}
        if len(found) + bool(class_masks) != 1:
            raise DataError(
                f"frame {image} needs exactly one annotation: masks/{stem}[{GT_SUFFIX}].<image> (colour "
                f"contours), contours/{stem}.xml or masks/<class>/{stem}.png; found "
                f"{len(found) + bool(class_masks)}"
            )
        records.append(
            ImageRecord(
                image,
                masks=class_masks or None,
                contours=found[0] if found else None,
                line_width=line_width,
                colour_tolerance=colour_tolerance,
                depth=depths.get(stem),
                annotated=tuple(class_masks) if class_masks else None,
            )
        )
    read_camera(root, images)
    return records, label_names


def read_camera(root: Path, stems: dict[str, Path]) -> dict[str, CameraIntrinsics]:
    """Intrinsics per frame from the shared camera file and/or ``intrinsics/<stem>.json`` (checked on
    read: a malformed file is an error naming it)."""
    shared = read_intrinsics(root / CAMERA_FILE) if (root / CAMERA_FILE).is_file() else None
    out = {s: shared for s in stems} if shared is not None else {}
    folder = root / "intrinsics"
    if folder.is_dir():
        for stem, path in image_files(folder, (".json",)).items():
            out[stem] = read_intrinsics(path)
    return out
