"""SAM-Med2D's json layout -> ``ImageRecord`` lists.

``image2label_*.json`` maps an image path to its mask paths (one binary mask per object,
``<image stem>_<label>_<instance>.png``); ``label2image_*.json`` is the reverse. Instances of the same
label are merged into one semantic mask.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from ..io import IMAGE_EXTENSIONS, DataError, check_mask_size, image_files, should_check_sizes
from ..labels import select_labels
from ..records import ImageRecord

log = logging.getLogger(__name__)
_INSTANCE_SUFFIX = re.compile(r"_\d+$")


def _resolve(rel: str, root: Path) -> Path:
    """Resolve a SAM-Med2D path such as ``data_demo/images/x.png`` against the dataset folder."""
    p = Path(rel)
    if p.is_absolute():
        return p
    candidates = [root / p, root.parent / p]
    if len(p.parts) > 1:
        candidates.append(root.joinpath(*p.parts[1:]))
    for c in candidates:
        if c.exists():
            return c
    return candidates[-1]


def sammed2d_layout(data: object) -> str | None:
    """``"image2label"``, ``"label2image"`` or None for a parsed json object."""
    if not isinstance(data, dict) or not data:
        return None
    keys_ok = all(isinstance(k, str) and Path(k).suffix.lower() in IMAGE_EXTENSIONS for k in data)
    if not keys_ok:
        return None
    values = list(data.values())
    if all(isinstance(v, list) and all(isinstance(m, str) for m in v) for v in values):
        return "image2label"
    if all(isinstance(v, str) and Path(v).suffix.lower() in IMAGE_EXTENSIONS for v in values):
        return "label2image"
    return None


def _label_of(mask: Path, image: Path) -> str:
    stem = mask.stem
    if stem.startswith(image.stem + "_"):
        stem = stem[len(image.stem) + 1 :]
    return _INSTANCE_SUFFIX.sub("", stem) or stem


def _load_json(path: Path) -> object:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"json file not found: {path}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read json {path}: {err}") from None


def read_sammed2d_json(
    json_path: Path,
    root: Path | None = None,
    labels: list[str] | None = None,
    check_sizes: bool | None = None,
) -> tuple[list[ImageRecord], list[str]]:
    """Read a SAM-Med2D ``image2label`` or ``label2image`` json (the layout is detected).

    Paths in the json start with the release's folder name (``data_demo/...``); they are resolved
    against ``root`` (default: the json's folder), with that first component replaced by ``root``.
    """
    json_path = Path(json_path)
    root = Path(root) if root is not None else json_path.parent
    data = _load_json(json_path)
    layout = sammed2d_layout(data)
    if layout is None:
        raise DataError(
            f"{json_path} is not a SAM-Med2D json: expected {{image: [masks]}} or {{mask: image}}"
        )
    pairs: dict[str, list[str]] = {}
    if layout == "image2label":
        pairs = {k: list(v) for k, v in data.items()}  # type: ignore[union-attr]
    else:
        for m, img in data.items():  # type: ignore[union-attr]
            pairs.setdefault(img, []).append(m)
    return _records_from_pairs(pairs, root, labels, str(json_path), check_sizes)


def _records_from_pairs(
    pairs: dict[str, list[str]], root: Path, labels: list[str] | None, source: str, check_sizes: bool | None
) -> tuple[list[ImageRecord], list[str]]:
    records = []
    check = should_check_sizes(check_sizes, len(pairs))
    for rel_img in sorted(pairs):
        image = _resolve(rel_img, root)
        if not image.is_file():
            raise DataError(f"image {image} listed in {source} does not exist")
        if not pairs[rel_img]:
            raise DataError(f"image {image} has no mask in {source}")
        rec = ImageRecord(image, masks={})
        for rel_mask in sorted(pairs[rel_img]):
            mask = _resolve(rel_mask, root)
            if not mask.is_file():
                raise DataError(f"mask {mask} (of image {image}) listed in {source} does not exist")
            if check:
                check_mask_size(image, mask)
            name = _label_of(mask, image)
            assert rec.masks is not None
            if name in rec.masks:
                rec.extra_masks.setdefault(name, []).append(mask)
            else:
                rec.masks[name] = mask
        records.append(rec)
    if not records:
        raise DataError(f"empty dataset: {source} lists no image")
    all_names = sorted({n for r in records for n in (r.masks or {})})
    return records, select_labels(all_names, labels, source)


def find_sammed2d_jsons(root: Path) -> list[Path]:
    """The json files directly in ``root`` that have a SAM-Med2D layout."""
    found = []
    for p in sorted(Path(root).glob("*.json")):
        if p.name.startswith(("image2label", "label2image")):  # SAM-Med2D's names: no need to parse
            found.append(p)
            continue
        if p.name in ("labels.json", "spacing.json", "splits.json"):
            continue
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if sammed2d_layout(data) is not None:
            found.append(p)
    return found


def read_sammed2d_folder(
    root: Path, labels: list[str] | None = None, check_sizes: bool | None = None
) -> tuple[list[ImageRecord], list[str]]:
    """Read every SAM-Med2D json in ``root`` (e.g. train + test) as one dataset, merged by image."""
    root = Path(root)
    jsons = find_sammed2d_jsons(root)
    if not jsons:
        raise DataError(f"empty dataset: no SAM-Med2D json (image2label / label2image) in {root}")
    pairs: dict[str, list[str]] = {}
    for j in jsons:
        data = _load_json(j)
        if sammed2d_layout(data) == "image2label":
            for img, ms in data.items():  # type: ignore[union-attr]
                pairs.setdefault(img, []).extend(m for m in ms if m not in pairs.get(img, []))
        else:
            for m, img in data.items():  # type: ignore[union-attr]
                if m not in pairs.setdefault(img, []):
                    pairs[img].append(m)
    records, names = _records_from_pairs(pairs, root, labels, ", ".join(str(j) for j in jsons), check_sizes)
    _warn_unlisted(root, records)
    return records, names


def _warn_unlisted(root: Path, records: list[ImageRecord]) -> None:
    img_dir = root / "images"
    if not img_dir.is_dir():
        return
    listed = {r.image.resolve() for r in records}
    unlisted = [p.name for p in image_files(img_dir).values() if p.resolve() not in listed]
    if unlisted:
        log.warning(
            "%d image(s) in %s are in no SAM-Med2D json and are skipped: %s", len(unlisted), img_dir, unlisted
        )
