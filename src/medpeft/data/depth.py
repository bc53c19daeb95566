"""Monocular-depth data: depth-map I/O, ``images/`` + ``depth/`` folder pairing, and the torch dataset.

Depth maps are float32 [H, W] in the dataset's unit (metres, mm, ...) after multiplying the stored
values by ``scale``; 0 marks a missing / invalid pixel everywhere (files, arrays and batches), as in
KITTI-style 16-bit PNGs, so one convention survives resizing, flipping and writing back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .io import IMAGE_EXTENSIONS, DataError, image_files, load_image
from .io import image_size as read_image_size
from .transforms import RESIZE_MODES, ResizeGeometry, flip, resize, resize_meta, valid_region

DEPTH_EXTENSIONS = (".png", ".npy", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
UINT16_MAX = 65535
FOLDER_LAYOUT = (
    f"expected root/images/<name>{{{','.join(IMAGE_EXTENSIONS)}}} and "
    f"root/depth/<name>{{{','.join(DEPTH_EXTENSIONS)}}} with matching names"
)
_INT_MODES = ("L", "I", "I;16", "I;16B", "I;16L", "I;16N")  # single-channel integer PIL modes

# ----------------------------------------------------------------------------- depth files


def _check_scale(scale: float, where: str) -> float:
    scale = float(scale)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"{where}: scale must be a finite number > 0, got {scale}")
    return scale


def _read_pil_depth(path: Path) -> np.ndarray:
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read depth file {path}: {err}") from None
    if getattr(img, "n_frames", 1) != 1:
        raise DataError(f"depth file {path} has {img.n_frames} pages; expected one 2-D depth map")
    allowed = _INT_MODES + (("F",) if path.suffix.lower() in (".tif", ".tiff") else ())
    if img.mode not in allowed:
        raise DataError(
            f"depth file {path} has PIL mode {img.mode!r}; expected a single-channel 16-bit (or float32 "
            f"TIFF) depth map, not a colour picture"
        )
    return np.asarray(img)


def _read_npy_depth(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read depth file {path}: {err}") from None
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"depth file {path} holds dtype {arr.dtype}; expected a float or integer array")
    return arr


def read_depth(path: Path, scale: float = 1.0) -> np.ndarray:
    """float32 [H, W] = stored value * ``scale``; non-finite or <= 0 values become 0 (invalid).

    Reads 16-bit PNGs (raw uint16, 0 = missing), ``.npy`` (2-D, or [H, W, 1]) and ``.tif``/``.tiff``
    (float32 or uint16, one page).
    """
    path = Path(path)
    scale = _check_scale(scale, str(path))
    suffix = path.suffix.lower()
    if suffix not in DEPTH_EXTENSIONS:
        raise DataError(
            f"depth file {path} has unsupported suffix {path.suffix!r}; expected one of {DEPTH_EXTENSIONS}"
        )
    if not path.is_file():
        raise DataError(f"depth file not found: {path}")
    arr = _read_npy_depth(path) if suffix == ".npy" else _read_pil_depth(path)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise DataError(
            f"depth file {path} has shape {tuple(arr.shape)}; expected a 2-D [H, W] (or [H, W, 1]) map"
        )
    depth = arr.astype(np.float64) * scale
    depth[~np.isfinite(depth) | (depth <= 0)] = 0.0
    return depth.astype(np.float32)


def _as_2d(depth: Any, path: Path) -> np.ndarray:
    arr = np.asarray(depth.detach().cpu() if isinstance(depth, torch.Tensor) else depth, dtype=np.float64)
    while arr.ndim > 2 and arr.shape[0] == 1:  # [1, H, W], [1, 1, H, W] (a batch of one)
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise ValueError(
            f"depth written to {path} has shape {np.shape(depth)}; expected [H, W] (or [1, H, W], [H, W, 1])"
        )
    return arr


def write_depth_png16(path: Path, depth: np.ndarray, scale: float) -> None:
    """Write ``round(depth / scale)`` as a 16-bit PNG that :func:`read_depth` reads back with ``scale``.

    Invalid pixels (non-finite or <= 0) are written as 0; valid ones are clipped to [1, 65535], so a
    tiny positive depth does not turn into "missing" and a far one saturates instead of wrapping.
    """
    path = Path(path)
    scale = _check_scale(scale, str(path))
    d = _as_2d(depth, path)
    valid = np.isfinite(d) & (d > 0)
    raw = np.zeros(d.shape, np.uint16)
    raw[valid] = np.clip(np.round(d[valid] / scale), 1, UINT16_MAX).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(raw).save(path)


def colorize_depth(
    depth: np.ndarray, vmin: float | None = None, vmax: float | None = None, cmap: str = "Spectral_r"
) -> np.ndarray:
    """uint8 RGB [H, W, 3] picture of a depth map: near = warm (red), far = cool (blue), invalid = black.

    ``vmin``/``vmax`` default to the 2nd/98th percentiles of the valid depths, so a few outliers do
    not wash out the picture; pass fixed values to compare pictures side by side.
    """
    d = np.asarray(depth, np.float64)
    valid = np.isfinite(d) & (d > 0)
    out = np.zeros((*d.shape, 3), np.uint8)
    if not valid.any():
        return out
    lo = float(np.percentile(d[valid], 2)) if vmin is None else float(vmin)
    hi = float(np.percentile(d[valid], 98)) if vmax is None else float(vmax)
    t = np.clip((hi - d[valid]) / (hi - lo), 0.0, 1.0) if hi > lo else np.full(int(valid.sum()), 0.5)
    import matplotlib  # lazily: only pictures need it

    out[valid] = matplotlib.colormaps[cmap](t, bytes=True)[:, :3]
    return out


def write_depth_picture(
    path: Path, depth: np.ndarray, vmin: float | None = None, vmax: float | None = None
) -> None:
    """Save :func:`colorize_depth` of ``depth`` (for looking at, not for reading back) as an image."""
    path = Path(path)
    picture = colorize_depth(_as_2d(depth, path), vmin, vmax)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)


# ----------------------------------------------------------------------------- folders


@dataclass(frozen=True)
class DepthRecord:
    """One RGB image and its depth map (``name``: the shared file stem)."""

    image: Path
    depth: Path
    name: str


def _files_by_stem(folder: Path, suffixes: tuple[str, ...], root: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"missing folder {folder}; {FOLDER_LAYOUT} (dataset root {root})")
    files = image_files(folder, suffixes)
    if not files:
        raise DataError(f"no {'/'.join(suffixes)} files in {folder}; {FOLDER_LAYOUT}")
    return files


def _unmatched(names: set[str], what: str) -> str:
    shown = sorted(names)[:5]
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"{len(names)} {what}: {', '.join(shown)}{more}"


def depth_beside(root: Path, images: dict[str, Path]) -> dict[str, Path]:
    """Depth maps ``root/depth/<stem>`` of a segmentation dataset's frames (for depth-guided models):
    none when there is no ``depth/`` folder; otherwise every frame needs one."""
    folder = Path(root) / "depth"
    if not folder.is_dir():
        return {}
    depths = image_files(folder, DEPTH_EXTENSIONS)
    missing = set(images) - set(depths)
    if missing:
        raise DataError(f"{folder}: {_unmatched(missing, 'frames without a depth map')}")
    return depths


def read_depth_folder(root: Path) -> list[DepthRecord]:
    """Pair ``root/images/*`` with ``root/depth/*`` by file stem, sorted by name.

    Every image needs a depth map and vice versa: a silent drop would shrink the data set unnoticed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"depth dataset folder not found: {root}; {FOLDER_LAYOUT}")
    images = _files_by_stem(root / "images", IMAGE_EXTENSIONS, root)
    depths = _files_by_stem(root / "depth", DEPTH_EXTENSIONS, root)
    no_depth, no_image = set(images) - set(depths), set(depths) - set(images)
    if no_depth or no_image:
        parts = []
        if no_depth:
            parts.append(_unmatched(no_depth, f"images without a depth map in {root / 'depth'}"))
        if no_image:
            parts.append(_unmatched(no_image, f"depth maps without an image in {root / 'images'}"))
        raise DataError(f"{root}: {'; '.join(parts)}")
    return [DepthRecord(images[k], depths[k], k) for k in sorted(images)]


# ----------------------------------------------------------------------------- dataset


class DepthDataset(Dataset):
    """RGB + depth pairs resized to ``image_size`` x ``image_size``.

    Items are dicts: ``image`` float32 [3,S,S] (0-1 then ``(x - mean) / std``; grayscale replicated),
    ``depth`` float32 [1,S,S] (``read_depth(path, scale)``, resized with nearest so invalid zeros
    never blend into valid depths), ``valid`` bool [1,S,S] (depth > 0) and ``name`` str.

    ``resize`` is the segmentation dataset's mode: ``"resize"`` (default) squashes to S x S;
    ``"longest_pad"`` keeps the aspect ratio and zero-pads, where the image is 0 after normalisation
    and ``valid`` is False. Items are flipped left-right with probability ``hflip_p`` (the config's
    ``data.augment.hflip_p`` in training; the other augmentations do not apply to depth) from a
    generator seeded by (seed, epoch, index): call :meth:`set_epoch` each epoch (non-persistent
    DataLoader workers see it), and two datasets with equal seeds give equal items.
    """

    def __init__(
        self,
        records: Sequence[DepthRecord],
        image_size: int,
        scale: float = 1.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        hflip_p: float = 0.0,
        seed: int = 0,
        resize: str = "resize",
    ) -> None:
        if int(image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize {resize!r}; expected one of {RESIZE_MODES}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean and std must be 3 numbers (std > 0), got mean={mean} std={std}")
        self.records = list(records)
        self.image_size = int(image_size)
        self.scale = _check_scale(scale, "DepthDataset")
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        if not 0.0 <= hflip_p <= 1.0:
            raise ValueError(f"hflip_p must be a probability in [0, 1], got {hflip_p}")
        self.hflip_p = float(hflip_p)
        self.seed = int(seed)
        self.resize = resize
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random flips the items use."""
        self.epoch = int(epoch)

    def get_meta(self, index: int) -> ResizeGeometry:
        """The resize geometry of an item (for :func:`~medpeft.data.transforms.undo_resize`); its
        paths are ``records[index]``."""
        rec = self.records[index]
        return resize_meta(read_image_size(rec.image), self.image_size, self.resize)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 image [H, W, 3] and float32 depth [H, W] of one record at their original size."""
        rec = self.records[index]
        image = load_image(rec.image)
        depth = read_depth(rec.depth, self.scale)
        if image.shape[:2] != depth.shape:
            raise DataError(
                f"depth map {rec.depth} is {depth.shape[0]}x{depth.shape[1]} but image {rec.image} is "
                f"{image.shape[0]}x{image.shape[1]}; expected equal sizes"
            )
        return image, depth

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, depth = self.load_pair(index)
        image, stacked, meta = resize(image, depth[None], self.image_size, self.resize)
        assert stacked is not None
        region = valid_region(meta)
        if self.hflip_p and np.random.default_rng([self.seed, self.epoch, index]).random() < self.hflip_p:
            image, stacked = flip(image, stacked, 1)
            region = region[:, ::-1]
        x = (image.astype(np.float32) / 255.0 - self.mean) / self.std
        x[~region] = 0.0
        d = np.ascontiguousarray(stacked, dtype=np.float32)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))),
            "depth": torch.from_numpy(d),
            "valid": torch.from_numpy(d > 0),
            "name": self.records[index].name,
        }
