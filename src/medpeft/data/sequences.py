"""Video sequences for self-supervised depth: frames in order, camera intrinsics, optional ground-truth
depth and masks of invalid pixels; and the dataset of (target, source frames) samples.

Layout (``read_sequences``), one folder per sequence under the root::

    root/<sequence>/images/<frame>.png|jpg|...   # sorted by name (numbers compared as numbers)
    root/<sequence>/intrinsics.json              # {"fx", "fy", "cx", "cy"} in pixels, or with
                                                 # "normalized": true as fractions of width / height;
                                                 # or {"frames": {"<frame>": {...}}} per frame
    root/<sequence>/depth/<frame>.png|npy|tif    # optional ground truth (depth.scale gives the unit)
    root/<sequence>/masks/<frame>.png            # optional: non-zero = invalid (speculars, instruments)

The SCARED layout is read as it comes (``read_scared``): ``<dataset>/<keyframe>/data/left/*.png`` (or
``left_finalpass``) frames and the keyframe's ``endoscope_calibration.yaml`` (OpenCV matrix ``M1``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .depth import DEPTH_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, read_depth
from .io import DataError, image_files, image_size, load_image
from .transforms import _resize_image, _resize_nearest


def natural_key(name: str) -> list[Any]:
    """Sort key comparing digit runs as numbers (``frame2`` before ``frame10``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@dataclass
class FrameSequence:
    """One sequence: frames in order, 3x3 intrinsics per frame (pixels of the original frames)."""

    name: str
    frames: list[Path]
    intrinsics: list[np.ndarray]
    depth: list[Path | None] = field(default_factory=list)
    masks: list[Path | None] = field(default_factory=list)


@dataclass(frozen=True)
class SequenceSample:
    """A target frame of a sequence and its source frames (indices into ``sequence.frames``)."""

    sequence: FrameSequence
    target: int
    sources: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.sequence.name}/{self.sequence.frames[self.target].stem}"


def _matrix(values: dict[str, Any], hw: tuple[int, int], where: str) -> np.ndarray:
    try:
        fx, fy, cx, cy = (float(values[k]) for k in ("fx", "fy", "cx", "cy"))
    except (KeyError, TypeError, ValueError):
        raise DataError(
            f"{where}: intrinsics need numbers fx, fy, cx, cy (pixels, or normalized: true)"
        ) from None
    if values.get("normalized"):
        h, w = hw
        fx, cx, fy, cy = fx * w, cx * w, fy * h, cy * h
    if fx <= 0 or fy <= 0:
        raise DataError(f"{where}: focal lengths must be positive, got fx={fx}, fy={fy}")
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64)


def read_intrinsics_json(path: Path, frames: list[Path]) -> list[np.ndarray]:
    """Per-frame 3x3 intrinsics from a sequence's ``intrinsics.json`` (one set, or one per frame)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"missing {path}: a sequence needs intrinsics.json with fx, fy, cx, cy") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with fx, fy, cx, cy or frames")
    hw = image_size(frames[0])
    if "frames" in data:
        per = data["frames"]
        missing = [f.stem for f in frames if f.stem not in per]
        if missing:
            raise DataError(f"{path}: no intrinsics for frame {missing[0]} ({len(missing)} missing)")
        return [_matrix(per[f.stem], hw, f"{path} frame {f.stem}") for f in frames]
    return [_matrix(data, hw, str(path))] * len(frames)


def _optional(folder: Path, frames: list[Path], suffixes: tuple[str, ...]) -> list[Path | None]:
    found = image_files(folder, suffixes) if folder.is_dir() else {}
    return [found.get(f.stem) for f in frames]


def read_sequence(folder: Path) -> FrameSequence:
    """One sequence folder (see the module doc)."""
    images = folder / "images"
    frames = (
        sorted(image_files(images).values(), key=lambda p: natural_key(p.name)) if images.is_dir() else []
    )
    if not frames:
        raise DataError(f"sequence {folder}: no frames in {images}")
    patterns = {tuple(t for t in natural_key(f.stem) if isinstance(t, str)) for f in frames}
    numbers = [tuple(t for t in natural_key(f.stem) if isinstance(t, int)) for f in frames]
    if len(patterns) > 1 or len(set(numbers)) != len(numbers):
        raise DataError(
            f"sequence {folder}: frame names do not follow one numbering (e.g. {frames[0].name}, "
            f"{frames[-1].name}); name frames so that sorting them gives the video order"
        )
    return FrameSequence(
        folder.name,
        frames,
        read_intrinsics_json(folder / "intrinsics.json", frames),
        _optional(folder / "depth", frames, DEPTH_EXTENSIONS),
        _optional(folder / "masks", frames, (".png", ".jpg", ".bmp", ".tif", ".tiff")),
    )


def read_sequences(root: Path) -> list[FrameSequence]:
    """Every sequence folder under ``root`` (or ``root`` itself when it is one), by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"sequence dataset folder not found: {root}")
    if (root / "images").is_dir():
        return [read_sequence(root)]
    if any(root.glob("*/*/data/left*")):
        return read_scared(root)
    folders = sorted(
        (p for p in root.iterdir() if (p / "images").is_dir()), key=lambda p: natural_key(p.name)
    )
    if not folders:
        raise DataError(
            f"{root}: no sequences; expected <sequence>/images/ with intrinsics.json, or SCARED "
            "<dataset>/<keyframe>/data/left/"
        )
    return [read_sequence(p) for p in folders]


def _opencv_matrix(text: str, key: str, path: Path) -> np.ndarray:
    m = re.search(rf"{key}:\s*!!opencv-matrix.*?data:\s*\[([^\]]*)\]", text, re.S)
    if m is None:
        raise DataError(f"{path}: no OpenCV matrix {key} (the left camera's intrinsics)")
    values = [float(v) for v in m.group(1).replace("\n", " ").split(",") if v.strip()]
    if len(values) != 9:
        raise DataError(f"{path}: {key} has {len(values)} numbers; expected 9")
    return np.array(values, np.float64).reshape(3, 3)


def read_scared(root: Path) -> list[FrameSequence]:
    """SCARED keyframes as sequences: ``data/left`` (or ``data/left_finalpass``) frames and ``M1`` of
    ``endoscope_calibration.yaml``; named ``<dataset>_<keyframe>``."""
    out = []
    for keyframe in sorted(root.glob("*/*"), key=lambda p: natural_key(str(p))):
        left = next(
            (d for d in (keyframe / "data" / "left", keyframe / "data" / "left_finalpass") if d.is_dir()),
            None,
        )
        if left is None:
            continue
        frames = sorted(image_files(left).values(), key=lambda p: natural_key(p.name))
        if not frames:
            raise DataError(f"SCARED keyframe {keyframe}: no frames in {left}")
        calib = keyframe / "endoscope_calibration.yaml"
        if not calib.is_file():
            raise DataError(f"SCARED keyframe {keyframe}: missing {calib.name}")
        k = _opencv_matrix(calib.read_text(), "M1", calib)
        out.append(
            FrameSequence(
                f"{keyframe.parent.name}_{keyframe.name}",
                frames,
                [k] * len(frames),
                [None] * len(frames),
                [None] * len(frames),
            )
        )
    if not out:
        raise DataError(f"{root}: no SCARED keyframes with data/left frames")
    return out


def samples(sequences: Sequence[FrameSequence], offsets: Sequence[int]) -> list[SequenceSample]:
    """Every target frame whose source frames (target + offset) all exist."""
    if not offsets or 0 in offsets:
        raise DataError(f"frame offsets must be non-zero, got {list(offsets)}")
    out = []
    lo, hi = min(0, *offsets), max(0, *offsets)
    for seq in sequences:
        if len(seq.frames) < hi - lo + 1:
            raise DataError(
                f"sequence {seq.name} has {len(seq.frames)} frames; offsets {list(offsets)} need at least {hi - lo + 1}"
            )
        for t in range(-lo, len(seq.frames) - hi):
            out.append(SequenceSample(seq, t, tuple(t + o for o in offsets)))
    return out


class SequenceDataset(Dataset):
    """Samples resized to ``height`` x ``width``.

    Items: ``image`` [3,H,W] (the target, ImageNet-normalised for Depth Anything), ``target_rgb`` [3,H,W]
    and ``source_rgb`` [S,3,H,W] in [0, 1] (for the photometric loss), ``intrinsics`` [3,3] scaled to the
    resized frame, ``mask`` [1,H,W] (False on invalid pixels), ``depth`` / ``valid`` [1,H,W] (zeros and
    False without ground truth) and ``name``. ``hflip_p`` flips every frame of a sample together and
    mirrors ``cx``.
    """

    def __init__(
        self,
        items: Sequence[SequenceSample],
        height: int,
        width: int,
        depth_scale: float = 1.0,
        hflip_p: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.items, self.height, self.width = list(items), int(height), int(width)
        self.depth_scale, self.hflip_p, self.seed, self.epoch = depth_scale, float(hflip_p), int(seed), 0
        self.mean = np.asarray(IMAGENET_MEAN, np.float32)
        self.std = np.asarray(IMAGENET_STD, np.float32)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def records(self) -> list[SequenceSample]:
        """The samples (``name``: ``<sequence>/<frame>``), as other datasets name their records."""
        return self.items

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rgb(self, path: Path) -> np.ndarray:
        return _resize_image(load_image(path), (self.height, self.width)).astype(np.float32) / 255.0

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.items[index]
        seq = s.sequence
        target = self._rgb(seq.frames[s.target])
        sources = np.stack([self._rgb(seq.frames[i]) for i in s.sources])
        h0, w0 = image_size(seq.frames[s.target])
        k = seq.intrinsics[s.target].copy()
        k[0] *= self.width / w0
        k[1] *= self.height / h0
        mask = np.ones((self.height, self.width), bool)
        if seq.masks and seq.masks[s.target] is not None:
            raw = np.asarray(load_image(seq.masks[s.target]))[..., 0]
            mask = ~_resize_nearest(raw[None] > 0, (self.height, self.width))[0]
        depth = np.zeros((self.height, self.width), np.float32)
        if seq.depth and seq.depth[s.target] is not None:
            depth = _resize_nearest(
                read_depth(seq.depth[s.target], self.depth_scale)[None], (self.height, self.width)
            )[0]
        if self.hflip_p and np.random.default_rng([self.seed, self.epoch, index]).random() < self.hflip_p:
            target, sources = target[:, ::-1], sources[:, :, ::-1]
            mask, depth = mask[:, ::-1], depth[:, ::-1]
            k[0, 2] = self.width - 1 - k[0, 2]
        normalised = (target - self.mean) / self.std
        chw = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, -3)))  # noqa: E731
        d = torch.from_numpy(np.ascontiguousarray(depth))[None]
        return {
            "image": chw(normalised),
            "target_rgb": chw(target),
            "source_rgb": chw(sources),
            "intrinsics": torch.from_numpy(k.astype(np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask))[None],
            "depth": d,
            "valid": d > 0,
            "name": s.name,
        }
