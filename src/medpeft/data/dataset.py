"""``SegmentationDataset``: records -> model-ready tensors with per-class box and point prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from .depth import read_depth
from .io import DataError, image_size, load_image, load_masks
from .prompt_sampling import eval_prompts, train_prompts
from .records import ImageRecord
from .transforms import (
    NORMALIZE_MODES,
    RESIZE_MODES,
    AugmentConfig,
    ResizeGeometry,
    augment,
    normalize,
    resize,
    resize_meta,
    rotate,
    valid_region,
)

PROMPT_SAMPLING = ("train", "eval")  # random prompts for training, deterministic ones for evaluation
CACHE_AUTO_LIMIT = 2000


@dataclass(frozen=True)
class ItemMeta:
    """Where an item came from and how it was resized (``geometry`` maps predictions back)."""

    path: Path
    spacing: tuple[float, float] | None
    geometry: ResizeGeometry

    @property
    def stem(self) -> str:
        return self.path.stem


class SegmentationDataset(Dataset):
    """Images resized to ``image_size`` with one mask and one prompt set per label.

    Items are dicts: ``image`` float [3,S,S], ``masks`` float [C,S,S], ``boxes`` float [C,4],
    ``box_valid`` bool [C], ``points`` float [C,N,2], ``point_labels`` long [C,N],
    ``class_ids`` long [C], ``class_valid`` bool [C] and ``index`` int, with
    N = n_pos_points + n_neg_points; with ``depth_scale`` set, also ``depth`` float [1,S,S]: the
    record's depth map (``ImageRecord.depth``, stored value x ``depth_scale``), resized and augmented
    with the image (nearest neighbour) and min-max scaled to [0.1, 1] over its valid pixels per frame
    (0 where invalid or padded), the input of a depth-guided model's depth stem. ``rotate_deg`` rotates
    every item in-plane by that angle about the centre (robustness evaluation; prompts follow the
    rotated masks). ``class_valid`` is False for labels the image is not
    annotated for (``ImageRecord.annotated``, in a source collection).

    ``classes_per_image=K`` gives K slots per item instead of one per label: labels the image is
    annotated for, those present in it first, in a seeded random order (SAM-style training on
    collections with many labels); ``class_ids`` says which label each slot is, and slots beyond
    the image's labels are padding with ``class_valid`` False.

    ``prompt_sampling="train"`` samples prompts (jittered box, random points) from a generator seeded
    by (seed, epoch, index), so call :meth:`set_epoch` each epoch (use non-persistent DataLoader
    workers so they see it); ``"eval"`` gives the tight box and the centre point. Augmentation
    (``augment``: :class:`AugmentConfig` fields, or None for none) runs after resizing; padding is
    zero after normalisation, as in SAM. ``cache`` keeps resized images in memory (default: on
    for up to 2000 records).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        label_names: Sequence[str],
        image_size: int = 256,
        resize: str = "longest_pad",
        normalize: str = "sam",
        augment: dict[str, Any] | AugmentConfig | None = None,
        prompt_sampling: str = "train",
        box_jitter: float = 0.1,
        n_pos_points: int = 1,
        n_neg_points: int = 0,
        seed: int = 0,
        box_jitter_px: float = 20.0,
        cache: bool | None = None,
        classes_per_image: int | None = None,
        depth_scale: float | None = None,
        rotate_deg: float | None = None,
    ) -> None:
        if resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize {resize!r}; expected one of {RESIZE_MODES}")
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"unknown normalize {normalize!r}; expected one of {NORMALIZE_MODES}")
        if prompt_sampling not in PROMPT_SAMPLING:
            raise ValueError(
                f"unknown prompt_sampling {prompt_sampling!r}; expected one of {PROMPT_SAMPLING}"
            )
        if n_pos_points < 0 or n_neg_points < 0:
            raise ValueError("n_pos_points and n_neg_points must be >= 0")
        self.records = list(records)
        self.label_names = list(label_names)
        self.image_size = image_size
        self.resize = resize
        self.normalize = normalize
        self.augment = None if augment is None else AugmentConfig.from_dict(augment)
        self.prompt_sampling = prompt_sampling
        self.box_jitter = box_jitter
        self.box_jitter_px = box_jitter_px
        self.n_pos_points = n_pos_points
        self.n_neg_points = n_neg_points
        self.seed = seed
        self.epoch = 0
        if classes_per_image is not None and classes_per_image < 1:
            raise ValueError(f"classes_per_image must be >= 1, got {classes_per_image}")
        self.classes_per_image = classes_per_image
        self.cache = len(self.records) <= CACHE_AUTO_LIMIT if cache is None else cache
        self._cache: dict[str, tuple[np.ndarray, np.ndarray, dict[str, Any]]] = {}
        self.depth_scale = depth_scale
        self.rotate_deg = rotate_deg
        self._depth_cache: dict[str, np.ndarray] = {}
        if depth_scale is not None:
            missing = [r.image for r in self.records if r.depth is None]
            if missing:
                raise DataError(
                    f"image {missing[0]} has no depth map (depth/<stem>.png|npy|tif beside images/); "
                    f"the depth source 'file' needs one per image ({len(missing)} missing)"
                )

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random prompts / augmentations the items use."""
        self.epoch = int(epoch)

    def annotated_ids(self, index: int) -> list[int]:
        """Indices (into ``label_names``) of the labels record ``index`` is annotated for."""
        ann = self.records[index].annotated
        return [i for i, n in enumerate(self.label_names) if ann is None or n in ann]

    def load_resized(self, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """uint8 image [S,S,3], bool masks [A,S,S] of the annotated labels (:meth:`annotated_ids`;
        all C labels outside collections) and resize meta of one record (cached if enabled)."""
        rec = self.records[index]
        key = str(rec.image)
        if key in self._cache:
            return self._cache[key]
        names = [self.label_names[i] for i in self.annotated_ids(index)]
        image, masks, meta = resize(
            load_image(rec.image), load_masks(rec, names), self.image_size, self.resize
        )
        assert masks is not None
        if self.cache:
            self._cache[key] = (image, masks, meta)
        return image, masks, meta

    def load_depth(self, index: int) -> np.ndarray:
        """float32 [S, S] depth of one record, resized like its image, scaled by :func:`unit_range` (cached if enabled)."""
        rec = self.records[index]
        key = str(rec.depth)
        if key in self._depth_cache:
            return self._depth_cache[key]
        depth = read_depth(rec.depth, self.depth_scale or 1.0)
        hw = image_size(rec.image)
        if depth.shape != hw:
            raise DataError(
                f"depth map {rec.depth} is {depth.shape[1]}x{depth.shape[0]} (WxH) but its image {rec.image} "
                f"is {hw[1]}x{hw[0]}; expected equal sizes"
            )
        out = depth_input(depth, self.image_size, self.resize)
        if self.cache:
            self._depth_cache[key] = out
        return out

    def _slots(
        self, index: int, masks: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class ids, valid flags, masks) of an item's slots from its annotated masks."""
        ids = np.array(self.annotated_ids(index), np.int64)
        if self.classes_per_image is None and len(ids) == self.num_classes:  # annotated for every label
            return ids, np.ones(self.num_classes, bool), masks
        if self.classes_per_image is None:
            full = np.zeros((self.num_classes, *masks.shape[1:]), bool)
            full[ids] = masks
            valid = np.zeros(self.num_classes, bool)
            valid[ids] = True
            return np.arange(self.num_classes), valid, full
        k = self.classes_per_image
        present = masks.reshape(len(ids), -1).any(1)
        order = np.concatenate(
            [rng.permutation(np.flatnonzero(present)), rng.permutation(np.flatnonzero(~present))]
        )
        order = order[:k].astype(np.int64)
        slot_ids = np.zeros(k, np.int64)
        slot_masks = np.zeros((k, *masks.shape[1:]), bool)
        valid = np.zeros(k, bool)
        slot_ids[: len(order)], slot_masks[: len(order)], valid[: len(order)] = ids[order], masks[order], True
        return slot_ids, valid, slot_masks

    def get_meta(self, index: int) -> ItemMeta:
        """Image path, pixel spacing and resize geometry (for writing predictions back)."""
        rec = self.records[index]
        return ItemMeta(
            rec.image, rec.spacing, resize_meta(image_size(rec.image), self.image_size, self.resize)
        )

    def _rng(self, index: int) -> np.random.Generator:
        if self.prompt_sampling == "train":
            return np.random.default_rng([self.seed, self.epoch, index])
        return np.random.default_rng([self.seed, index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, masks, meta = self.load_resized(index)
        valid = valid_region(meta)
        rng = self._rng(index)
        class_ids, class_valid, masks = self._slots(index, masks, rng)
        depth = self.load_depth(index) if self.depth_scale is not None else None
        if self.rotate_deg:  # a fixed in-plane rotation (robustness evaluation), masks nearest
            image, stacked = rotate(image, np.concatenate([masks, valid[None]]), self.rotate_deg)
            masks, valid = stacked[:-1], stacked[-1]
        if self.augment is not None:
            maps = [masks, valid[None]] if depth is None else [masks, valid[None], depth[None]]
            if depth is not None:  # float stack: geometry is applied to the depth map too
                maps = [m.astype(np.float32) for m in maps]
            image, stacked = augment(image, np.concatenate(maps), rng, self.augment)
            if depth is not None:
                depth, stacked = stacked[-1], stacked[:-1] > 0.5
            masks, valid = stacked[:-1], stacked[-1]
        x = normalize(image, self.normalize)
        x[~valid] = 0.0

        c, n = len(class_ids), self.n_pos_points + self.n_neg_points
        boxes = np.zeros((c, 4), np.float32)
        box_valid = np.zeros(c, bool)
        points = np.zeros((c, n, 2), np.float32)
        point_labels = np.full((c, n), -1, np.int64)
        for k in range(c):
            if self.prompt_sampling == "train":
                p = train_prompts(
                    masks[k],
                    rng,
                    self.n_pos_points,
                    self.n_neg_points,
                    self.box_jitter,
                    self.box_jitter_px,
                    valid,
                )
            else:
                p = eval_prompts(masks[k], rng, self.n_pos_points, self.n_neg_points, valid)
            boxes[k], box_valid[k], points[k], point_labels[k] = p.box, p.box_valid, p.points, p.point_labels
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))),
            "masks": torch.from_numpy(masks.astype(np.float32)),
            "boxes": torch.from_numpy(boxes),
            "box_valid": torch.from_numpy(box_valid),
            "points": torch.from_numpy(points),
            "point_labels": torch.from_numpy(point_labels),
            "class_ids": torch.from_numpy(class_ids),
            "class_valid": torch.from_numpy(class_valid),
            "index": index,
        }
        if depth is not None:
            item["depth"] = torch.from_numpy(np.ascontiguousarray(depth, np.float32))[None]
        return item


def depth_input(depth: np.ndarray, size: int, resize_mode: str) -> np.ndarray:
    """A depth map [H, W] as a depth stem's input [S, S]: resized like its image (nearest, so invalid
    zeros never blend in) and scaled by :func:`unit_range`."""
    _, resized, _ = resize(np.zeros((*depth.shape, 3), np.uint8), depth[None], size, resize_mode)
    return unit_range(resized[0])


def unit_range(depth: np.ndarray) -> np.ndarray:
    """Depth scaled to [0.1, 1] over its valid (> 0) pixels, invalid pixels 0 (so they stay apart). Per
    frame, so the depth stem sees relative shape whatever the file's unit or the camera's distance."""
    valid = np.isfinite(depth) & (depth > 0)
    out = np.zeros(depth.shape, np.float32)
    if valid.any():
        lo, hi = float(depth[valid].min()), float(depth[valid].max())
        out[valid] = 0.1 + 0.9 * (depth[valid] - lo) / (hi - lo) if hi > lo else 0.55
    return out


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into a batch (every item has the same C and N, so default stacking suffices)."""
    return default_collate(batch)
