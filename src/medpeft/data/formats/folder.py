"""The folder layout: ``images/`` + ``masks/`` matched by file stem -> ``ImageRecord`` lists.

Layout (``read_folder_dataset``)::

    root/images/<stem>.png|jpg|jpeg|tif|tiff|bmp
    root/masks/<stem>.<any of those>       # matched to its image by file stem
    root/labels.json                       # optional, {"1": "liver", "2": "spleen"}
    root/spacing.json                      # optional, {"<stem>": [row_mm, col_mm]}
    root/depth/<stem>.png|npy|tif          # optional: depth maps, for depth-guided models

How a mask is read is decided by ``labels.json``:

* no ``labels.json``, or one that names a single label: every mask is **binary**; it is
  thresholded at half its maximum (so 0/1, 0/255 and JPEG-compressed masks all work) and the
  label is named by ``labels`` / ``labels.json`` / ``"foreground"``, in that order;
* ``labels.json`` naming two or more labels: every mask is an **integer label map** and a label's
  channel is ``mask == value`` (store label maps losslessly, e.g. PNG).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..depth import depth_beside
from ..io import IMAGE_EXTENSIONS, DataError, check_mask_size, image_files, should_check_sizes
from ..labels import DEFAULT_LABEL, parse_labels_json, select_labels
from ..records import ImageRecord


def _read_spacing(root: Path) -> dict[str, tuple[float, float]]:
    path = root / "spacing.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {str(k): (float(v[0]), float(v[1])) for k, v in data.items()}
    except (OSError, json.JSONDecodeError, TypeError, ValueError, IndexError, AttributeError):
        raise DataError(f'cannot read {path}: expected {{"<stem>": [row_mm, col_mm], ...}}') from None


def read_folder_dataset(
    root: Path, labels: list[str] | None = None, check_sizes: bool | None = None
) -> tuple[list[ImageRecord], list[str]]:
    """Read ``root/images`` + ``root/masks`` matched by file stem (see the module doc for mask rules).

    ``labels`` names the single binary label, or selects a subset of a label map's labels.
    ``check_sizes`` compares every mask's size with its image's (headers only) up front; by default
    only for datasets of up to 5000 images (``load_masks`` always checks).
    """
    root = Path(root)
    img_dir, mask_dir = root / "images", root / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise DataError(f"missing folder {d}: a folder dataset needs {root}/images and {root}/masks")
    images, masks = image_files(img_dir), image_files(mask_dir)
    if not images:
        raise DataError(f"empty dataset: no images ({', '.join(IMAGE_EXTENSIONS)}) in {img_dir}")
    for stem, p in images.items():
        if stem not in masks:
            raise DataError(f"image {p} has no mask with the same stem in {mask_dir}")
    for stem, p in masks.items():
        if stem not in images:
            raise DataError(f"mask {p} has no image with the same stem in {img_dir}")

    table = parse_labels_json(root / "labels.json") if (root / "labels.json").is_file() else None
    spacing = _read_spacing(root)
    depths = depth_beside(root, images)
    if table is None or len(table) == 1:
        name = next(iter(table.values())) if table else DEFAULT_LABEL
        if labels is not None:
            if len(labels) != 1:
                raise DataError(
                    f"{root} has binary masks (one label) but {len(labels)} labels were given: {labels}"
                )
            name = labels[0]
        label_names = [name]
        records = [
            ImageRecord(p, masks={name: masks[s]}, spacing=spacing.get(s), depth=depths.get(s))
            for s, p in images.items()
        ]
    else:
        all_names = list(table.values())
        label_names = select_labels(all_names, labels, str(root / "labels.json"))
        values = {n: v for v, n in table.items() if n in label_names}
        records = [
            ImageRecord(
                p, label_map=masks[s], label_values=values, spacing=spacing.get(s), depth=depths.get(s)
            )
            for s, p in images.items()
        ]
    if should_check_sizes(check_sizes, len(images)):
        for s, p in images.items():
            check_mask_size(p, masks[s])
    return records, label_names
