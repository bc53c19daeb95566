"""Pixel I/O of 2D data: images as RGB uint8 arrays and masks as boolean stacks, read with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .records import ImageRecord

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
CHECK_SIZES_LIMIT = 5000  # read_* check mask sizes up front by default up to this many images


class DataError(ValueError):
    """A dataset problem the user must fix (missing, unreadable or inconsistent files)."""


def one_line(err: BaseException | str) -> str:
    """An exception's message on one line (for reports that list failures)."""
    return " ".join(str(err).strip("'\"").split())


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
    if record.contours is not None:
        return _contour_masks(record, label_names, hw)
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
    if record.line_width > 1:
        from .landmarks import thicken

        out = np.stack([thicken(m, record.line_width) for m in out]) if len(out) else out
    return out


def _contour_masks(record: ImageRecord, label_names: list[str], hw: tuple[int, int]) -> np.ndarray:
    """Landmark curves of a record drawn as colours or stored as contour XML, in ``label_names`` order."""
    from .landmarks import read_colour_contours, read_contour_xml

    path = Path(record.contours)
    if path.suffix.lower() == ".xml":
        curves = read_contour_xml(path, hw, record.line_width)
    else:
        curves = read_colour_contours(path, tolerance=record.colour_tolerance, line_width=record.line_width)
        first = next(iter(curves.values()))
        if first.shape != hw:
            raise DataError(_size_message(path, first.shape, record.image, hw))
    out = np.zeros((len(label_names), *hw), bool)
    for c, name in enumerate(label_names):
        if name in curves:
            out[c] = curves[name]
    return out


def image_files(folder: Path, suffixes: tuple[str, ...] = IMAGE_EXTENSIONS) -> dict[str, Path]:
    """Files of ``folder`` with one of ``suffixes`` by stem (hidden files skipped); a repeated stem is an error."""
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes:
            if p.stem in files:
                raise DataError(f"two files with stem {p.stem!r} in {folder}: {files[p.stem].name}, {p.name}")
            files[p.stem] = p
    return files


def should_check_sizes(check_sizes: bool | None, n_images: int) -> bool:
    return check_sizes if check_sizes is not None else n_images <= CHECK_SIZES_LIMIT


def check_mask_size(image: Path, mask: Path) -> None:
    ihw, mhw = image_size(image), image_size(mask, "mask")
    if ihw != mhw:
        raise DataError(_size_message(mask, mhw, image, ihw))
