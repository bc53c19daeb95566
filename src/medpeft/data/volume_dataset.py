"""Whole volumes for 3D promptable models: cases from a volume dataset or a source collection, split by
subject, served at the model's input size with per-class 3D prompts.

Each item is one of SegVol's two views: the whole volume resized to the input (zoom-out), or in training
with probability ``zoom_in`` a full-resolution window of the input size around one class's foreground,
zero-padded where the volume is smaller (zoom-in): exactly what the sliding window of the second
inference pass shows the model, at the volume's own voxel size. Arrays are [D, H, W] = the RAS volume's (z, y, x).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .io import DataError
from .prompt_sampling import eval_prompts, train_prompts
from .splits import split_records
from .volume_io import read_volume, read_volume_dataset, to_uint8

Window = str | tuple[float, float] | None


@dataclass(frozen=True)
class VolumeCase:
    """One image volume, its label map (None: unlabelled), label name -> values in that map, the labels
    it is annotated for, its intensity window and its subject (frames of one patient share one)."""

    image: Path
    label: Path | None
    groups: tuple[tuple[str, tuple[int, ...]], ...]
    window: Window = None

    @property
    def annotated(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.groups)

    @property
    def subject(self) -> str:
        """The case name without a frame / time suffix (ACDC's ``patient001_frame01`` -> ``patient001``)."""
        stem = self.image.name.removesuffix(".gz").removesuffix(".nii")
        return f"{self.image.parent}/" + re.sub(r"_(frame|time|t)\d+$", "", stem)


def dataset_cases(root: Path, window: Window = None, **layout: Any) -> tuple[list[VolumeCase], list[str]]:
    """The labelled cases of a volume dataset (:func:`read_volume_dataset`) and its label names."""
    cases, table = read_volume_dataset(Path(root), **layout)
    groups = tuple((name, (value,)) for value, name in sorted(table.items()))
    out = [VolumeCase(img, lab, groups, window) for img, lab in cases if lab is not None]
    if not out:
        raise DataError(f"{root}: no case has a label map")
    return out, [n for n, _ in groups]


def source_cases(source: Any) -> tuple[list[VolumeCase], list[str]]:
    """The cases of one ``data.sources`` entry holding volumes (``dataset`` or ``volume`` + ``label_map``)."""
    from .collection import volume_groups, volume_pairs

    if source.root is not None:
        raise DataError(f"data.sources: {source.root} is a 2D dataset; a volume model takes volumes")
    groups = tuple((name, tuple(values)) for name, values in volume_groups(source).items())
    cases = [VolumeCase(img, lab, groups, source.window) for img, lab in volume_pairs(source)]
    return cases, [n for n, _ in groups]


def split_cases(
    cases: list[VolumeCase], split: tuple[float, float, float], seed: int
) -> dict[str, list[VolumeCase]]:
    """Train / val / test by subject (no subject straddles two splits), deterministic in ``seed``."""
    subjects = split_records(sorted({c.subject for c in cases}), split, seed=seed)
    return {k: [c for c in cases if c.subject in set(v)] for k, v in subjects.items()}


def resize(array: torch.Tensor, size: tuple[int, ...], label: bool = False) -> torch.Tensor:
    """``[C, D, H, W]`` resized (trilinear; nearest for label maps)."""
    if tuple(array.shape[1:]) == tuple(size):
        return array
    mode = "nearest" if label else "trilinear"
    out = F.interpolate(
        array[None].float(), size=size, mode=mode, **({} if label else {"align_corners": False})
    )
    return out[0]


def pad_to(array: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``[C, D, H, W]`` zero-padded evenly to at least ``size`` (as MONAI's sliding window pads a volume
    smaller than its window), so training windows look like inference windows."""
    pad: list[int] = []
    for n, r in zip(reversed(array.shape[1:]), reversed(size), strict=True):
        diff = max(r - n, 0)
        pad += [diff // 2, diff - diff // 2]
    return F.pad(array, pad) if any(pad) else array


def load_case(case: VolumeCase) -> tuple[np.ndarray, np.ndarray | None]:
    """The volume as float32 [D, H, W] in [0, 1] (window / percentiles) and its label map [D, H, W]."""
    image = read_volume(case.image)
    scaled = to_uint8(image.array, case.window).transpose(2, 1, 0).astype(np.float32) / 255.0
    if case.label is None:
        return np.ascontiguousarray(scaled), None
    label = read_volume(case.label, label=True).array.transpose(2, 1, 0)
    if label.shape != scaled.shape:
        raise DataError(
            f"label map {case.label} {label.shape} does not match its volume {case.image} {scaled.shape}"
        )
    return np.ascontiguousarray(scaled), np.ascontiguousarray(np.rint(label).astype(np.int16))


def crop_around(mask: np.ndarray, roi: tuple[int, int, int], rng: np.random.Generator) -> tuple[slice, ...]:
    """A window of size ``roi`` (clipped to the volume) containing a random foreground voxel of ``mask``."""
    idx = np.argwhere(mask)
    centre = idx[rng.integers(len(idx))] if len(idx) else np.array(mask.shape) // 2
    out = []
    for c, r, n in zip(centre, roi, mask.shape, strict=True):
        start = int(np.clip(c - r // 2 + rng.integers(-r // 4, r // 4 + 1), 0, max(0, n - r)))
        out.append(slice(start, start + r))
    return tuple(out)


class VolumeDataset(Dataset):
    """Cases as model inputs ``image [1, D, H, W]`` with per-class ``masks [K, D, H, W]``, 3D ``boxes [K, 6]``,
    ``points [K, N, 3]``, ``class_ids`` and ``class_valid`` (K = the label count, or
    ``classes_per_image`` sampled in training). Volumes are read once and kept in memory."""

    def __init__(
        self,
        cases: list[VolumeCase],
        label_names: list[str],
        roi: tuple[int, int, int],
        train: bool,
        zoom_in: float = 0.5,
        box_jitter: float = 0.1,
        n_pos_points: int = 1,
        n_neg_points: int = 0,
        classes_per_image: int | None = None,
        seed: int = 0,
        rotate_p: float = 0.0,
        rotate_max_deg: float = 0.0,
    ) -> None:
        self.cases, self.label_names, self.roi = list(cases), list(label_names), tuple(roi)
        self.rotate_p, self.rotate_max_deg = rotate_p, rotate_max_deg
        self.train, self.zoom_in, self.box_jitter = train, zoom_in, box_jitter
        self.n_pos, self.n_neg, self.k, self.seed = n_pos_points, n_neg_points, classes_per_image, seed
        self.epoch = 0
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        unknown = {n for c in cases for n in c.annotated} - set(label_names)
        if unknown:
            raise DataError(f"volume labels {sorted(unknown)} are not among the label names {label_names}")

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.cases)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        if index not in self._cache:
            self._cache[index] = load_case(self.cases[index])
        return self._cache[index]

    def rotated(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """The volume and labels turned about their centre (MONAI ``Rotate``; nearest for labels): up to
        ``rotate_max_deg`` about the longitudinal axis (axis 0 here) and a tenth of it about the others."""
        from medpeft.engine.volumes import rotate_volume

        limit = np.radians(self.rotate_max_deg)
        angles = tuple(float(a) for a in rng.uniform(-1, 1, 3) * np.array([limit, limit / 10, limit / 10]))
        return rotate_volume(image, angles), rotate_volume(label, angles, label=True)

    def class_masks(self, case: VolumeCase, label: np.ndarray) -> np.ndarray:
        """``[num_classes, D, H, W]`` bool; rows of labels the case is not annotated for stay empty."""
        masks = np.zeros((self.num_classes, *label.shape), bool)
        for name, values in case.groups:
            masks[self.label_names.index(name)] = np.isin(label, values)
        return masks

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index]
        image, label = self.arrays(index)
        if label is None:
            raise DataError(f"{case.image}: no label map to train or score on")
        rng = np.random.default_rng((self.seed, index, self.epoch if self.train else 0))
        if self.train and self.rotate_p and rng.random() < self.rotate_p:
            image, label = self.rotated(image, label, rng)
        masks = self.class_masks(case, label)
        annotated = np.array([n in case.annotated for n in self.label_names])
        image_t, masks_t = torch.from_numpy(image)[None], torch.from_numpy(masks)
        present = [i for i in range(self.num_classes) if masks[i].any()]
        if self.train and present and rng.random() < self.zoom_in:  # zoom-in: a full-resolution window
            window = crop_around(masks[present[rng.integers(len(present))]], self.roi, rng)
            image_t = pad_to(image_t[(slice(None), *window)], self.roi)
            masks_t = pad_to(masks_t[(slice(None), *window)], self.roi) > 0.5
        else:  # zoom-out: the whole volume resized to the input
            image_t = resize(image_t, self.roi)
            masks_t = resize(masks_t, self.roi, label=True) > 0.5
        ids = np.arange(self.num_classes)
        if self.train and self.k is not None and self.k < self.num_classes:  # sampled labels, present first
            order = rng.permutation(self.num_classes)
            order = order[
                np.argsort(~annotated[order] | ~masks_t.flatten(1).any(1).numpy()[order], kind="stable")
            ]
            ids = np.sort(order[: self.k])
        return self._item(image_t, masks_t[ids].numpy(), ids, annotated[ids], rng, index)

    def _item(
        self,
        image: torch.Tensor,
        masks: np.ndarray,
        ids: np.ndarray,
        valid: np.ndarray,
        rng: np.random.Generator,
        index: int,
    ) -> dict[str, Any]:
        k = len(ids)
        boxes = np.zeros((k, 6), np.float32)
        box_valid = np.zeros(k, bool)
        points = np.zeros((k, self.n_pos + self.n_neg, 3), np.float32)
        labels = np.full((k, self.n_pos + self.n_neg), -1, np.int64)
        for j in range(k):
            if self.train:
                p = train_prompts(masks[j], rng, self.n_pos, self.n_neg, self.box_jitter)
            else:
                p = eval_prompts(
                    masks[j], np.random.default_rng((self.seed, index, j)), self.n_pos, self.n_neg
                )
            boxes[j], box_valid[j], points[j], labels[j] = p.box, p.box_valid, p.points, p.point_labels
        return {
            "image": image.float(),
            "masks": torch.from_numpy(masks.astype(np.float32)),
            "boxes": torch.from_numpy(boxes),
            "box_valid": torch.from_numpy(box_valid),
            "points": torch.from_numpy(points),
            "point_labels": torch.from_numpy(labels),
            "class_ids": torch.from_numpy(ids.astype(np.int64)),
            "class_valid": torch.from_numpy(valid),
            "index": index,
        }
