"""Dataset readers: a folder of images + masks, or SAM-Med2D's json layout -> ``ImageRecord`` lists.

Folder layout (``read_folder_dataset``)::

    root/images/<stem>.png|jpg|jpeg|tif|tiff|bmp
    root/masks/<stem>.<any of those>       # matched to its image by file stem
    root/labels.json                       # optional, {"1": "liver", "2": "spleen"}
    root/spacing.json                      # optional, {"<stem>": [row_mm, col_mm]}

How a mask is read is decided by ``labels.json``:

* no ``labels.json``, or one that names a single label: every mask is **binary**; it is
  thresholded at half its maximum (so 0/1, 0/255 and JPEG-compressed masks all work) and the
  label is named by ``labels`` / ``labels.json`` / ``"foreground"``, in that order;
* ``labels.json`` naming two or more labels: every mask is an **integer label map** and a label's
  channel is ``mask == value`` (store label maps losslessly, e.g. PNG).

SAM-Med2D layout (``read_sammed2d_json``): ``image2label_*.json`` maps an image path to its mask
paths (one binary mask per object, ``<image stem>_<label>_<instance>.png``); ``label2image_*.json``
is the reverse. Instances of the same label are merged into one semantic mask.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DEFAULT_LABEL = "foreground"
CHECK_SIZES_LIMIT = 5000  # read_* check mask sizes up front by default up to this many images
_INSTANCE_SUFFIX = re.compile(r"_\d+$")


class DataError(ValueError):
    """A dataset problem the user must fix (missing, unreadable or inconsistent files)."""


@dataclass
class ImageRecord:
    """One 2D image and its annotation.

    Either ``masks`` (label -> binary mask file) or ``label_map`` (one integer mask whose values are
    given by ``label_values``; default: label i of the list is value i + 1) is set. ``extra_masks``
    holds further instance masks of a label, merged with ``masks[label]``. ``spacing`` is the pixel
    size (row, col) in mm when known. ``annotated`` names the labels the image was annotated for
    when it comes from a collection whose members label different structures (a polyp image says
    nothing about the liver); losses and scores skip the others.
    """

    image: Path
    masks: dict[str, Path] | None = None
    label_map: Path | None = None
    spacing: tuple[float, float] | None = None
    label_values: dict[str, int] | None = None
    extra_masks: dict[str, list[Path]] = field(default_factory=dict)
    annotated: tuple[str, ...] | None = None  # labels this image is annotated for; None: all of them

    @property
    def stem(self) -> str:
        return self.image.stem


# ----------------------------------------------------------------------------- pixels


def _open(path: Path, what: str = "image") -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise DataError(f"{what} file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read {what} {path}: {err}") from None
    return img


def image_size(path: Path, what: str = "image") -> tuple[int, int]:
    """(height, width) of an image file, reading only its header."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError:
        raise DataError(f"{what} file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read {what} {path}: {err}") from None
    return h, w


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def load_image(path: Path) -> np.ndarray:
    """Read an image as uint8 [H, W, 3].

    Grayscale is replicated to 3 channels, alpha dropped, palette expanded; 16-bit / float images
    are min-max scaled to 0-255.
    """
    path = Path(path)
    img = _open(path)
    if img.mode in ("RGB", "L"):
        arr = np.asarray(img)
    elif img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = _to_uint8(np.asarray(img))
    elif img.mode in ("LA", "1"):
        arr = np.asarray(img.convert("L"))
    else:  # RGBA, P, CMYK, YCbCr, ...
        arr = np.asarray(img.convert("RGB"))
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.shape[2] != 3:
        arr = _to_uint8(arr[:, :, :3])
    return np.ascontiguousarray(arr)


def _read_mask(path: Path, expected_hw: tuple[int, int], image: Path) -> np.ndarray:
    img = _open(path, "mask")
    if img.mode == "1":
        img = img.convert("L")
    arr = np.asarray(img)
    if (arr.shape[0], arr.shape[1]) != expected_hw:
        raise DataError(_size_message(path, (arr.shape[0], arr.shape[1]), image, expected_hw))
    return arr


def _binary(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3:
        arr = arr[:, :, :3].max(axis=2) if arr.shape[2] >= 3 else arr[:, :, 0]
    peak = float(arr.max())
    if peak <= 0:
        return np.zeros(arr.shape, bool)
    return arr > peak / 2


def _size_message(mask: Path, mask_hw: tuple[int, int], image: Path, image_hw: tuple[int, int]) -> str:
    return (
        f"mask {mask} is {mask_hw[1]}x{mask_hw[0]} (WxH) but its image {image} is {image_hw[1]}x{image_hw[0]}"
    )


def load_masks(record: ImageRecord, label_names: list[str]) -> np.ndarray:
    """Per-label binary masks bool [C, H, W] in ``label_names`` order; an absent label is all False."""
    hw = image_size(record.image)
    out = np.zeros((len(label_names), *hw), bool)
    if record.label_map is not None:
        arr = _read_mask(record.label_map, hw, record.image)
        values = record.label_values
        if values is None:  # no value table: label i is value i + 1
            values = {name: i + 1 for i, name in enumerate(label_names)}
        if len(values) == 1:
            name = next(iter(values))
            if name in label_names:
                out[label_names.index(name)] = _binary(arr)
            return out
        if arr.ndim == 3:
            arr = arr[:, :, 0]
        for c, name in enumerate(label_names):
            if name in values:
                out[c] = arr == values[name]
        return out
    for c, name in enumerate(label_names):
        paths = []
        if record.masks and name in record.masks:
            paths.append(record.masks[name])
        paths += record.extra_masks.get(name, [])
        for p in paths:
            out[c] |= _binary(_read_mask(p, hw, record.image))
    return out


# ----------------------------------------------------------------------------- label tables


def parse_labels_json(path: Path, key: str | None = None) -> dict[int, str]:
    """Read a label table: {"1": "liver"}, {"labels": {...}}, {"liver": 1} or ["background", "liver"].

    ``key`` selects a nested table (TotalSegmentator's labels.json holds ``ct`` and ``mr``).
    Value 0 is background and dropped. Returns value -> name sorted by value.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read label table {path}: {err}") from None
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            keys = list(data) if isinstance(data, dict) else []
            raise DataError(f"label table {path} has no key {key!r}; keys: {keys}")
        data = data[key]
    if isinstance(data, dict) and isinstance(data.get("labels"), dict | list):
        data = data["labels"]
    table: dict[int, str] = {}
    try:
        if isinstance(data, list):
            table = {i: str(n) for i, n in enumerate(data)}
        elif isinstance(data, dict) and all(isinstance(v, int) for v in data.values()):
            table = {int(v): str(k) for k, v in data.items()}
        elif isinstance(data, dict):
            table = {int(k): str(v) for k, v in data.items()}
        else:
            raise TypeError
    except (TypeError, ValueError):
        raise DataError(
            f'label table {path} must map integer values to names, e.g. {{"1": "liver", "2": "spleen"}}'
        ) from None
    table.pop(0, None)
    if not table:
        raise DataError(f"label table {path} names no label (value 0 is background)")
    names = list(table.values())
    if len(set(names)) != len(names):
        raise DataError(f"label table {path} repeats a label name: {names}")
    return dict(sorted(table.items()))


def _select(available: list[str], wanted: list[str] | None, source: str) -> list[str]:
    if wanted is None:
        return available
    for name in wanted:
        if name not in available:
            raise DataError(f"unknown label {name!r} in {source}; valid labels: {available}")
    return list(wanted)


# ----------------------------------------------------------------------------- folder layout


def _image_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS:
            if p.stem in files:
                raise DataError(f"two files with stem {p.stem!r} in {folder}: {files[p.stem].name}, {p.name}")
            files[p.stem] = p
    return files


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
    images, masks = _image_files(img_dir), _image_files(mask_dir)
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
    if table is None or len(table) == 1:
        name = next(iter(table.values())) if table else DEFAULT_LABEL
        if labels is not None:
            if len(labels) != 1:
                raise DataError(
                    f"{root} has binary masks (one label) but {len(labels)} labels were given: {labels}"
                )
            name = labels[0]
        label_names = [name]
        records = [ImageRecord(p, masks={name: masks[s]}, spacing=spacing.get(s)) for s, p in images.items()]
    else:
        all_names = list(table.values())
        label_names = _select(all_names, labels, str(root / "labels.json"))
        values = {n: v for v, n in table.items() if n in label_names}
        records = [
            ImageRecord(p, label_map=masks[s], label_values=values, spacing=spacing.get(s))
            for s, p in images.items()
        ]
    if _should_check(check_sizes, len(images)):
        for s, p in images.items():
            _check_size(p, masks[s])
    return records, label_names


def _should_check(check_sizes: bool | None, n_images: int) -> bool:
    return check_sizes if check_sizes is not None else n_images <= CHECK_SIZES_LIMIT


def _check_size(image: Path, mask: Path) -> None:
    ihw, mhw = image_size(image), image_size(mask, "mask")
    if ihw != mhw:
        raise DataError(_size_message(mask, mhw, image, ihw))


# ----------------------------------------------------------------------------- SAM-Med2D layout


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
    check = _should_check(check_sizes, len(pairs))
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
                _check_size(image, mask)
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
    return records, _select(all_names, labels, source)


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
    unlisted = [p.name for p in _image_files(img_dir).values() if p.resolve() not in listed]
    if unlisted:
        log.warning(
            "%d image(s) in %s are in no SAM-Med2D json and are skipped: %s", len(unlisted), img_dir, unlisted
        )


# ----------------------------------------------------------------------------- dispatch


def detect_format(root: Path) -> str:
    """``"sammed2d"`` when ``root`` holds a SAM-Med2D json, else ``"folder"``."""
    return "sammed2d" if find_sammed2d_jsons(root) else "folder"


def read_dataset(
    root: Path, format: str = "auto", labels: list[str] | None = None, check_sizes: bool | None = None
) -> tuple[list[ImageRecord], list[str]]:
    """Read a dataset folder (``format``: ``auto``, ``folder`` or ``sammed2d``) or a SAM-Med2D json file."""
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
    raise DataError(f"unknown dataset format {format!r}; expected 'auto', 'folder' or 'sammed2d'")
