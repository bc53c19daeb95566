"""Self-supervised monocular depth from video (monodepth2; DARES on Depth Anything): the depth of a
target frame and the camera motion to its neighbours must re-create the target from the neighbours.

Validation and evaluation are the depth task's (AbsRel and friends against ground-truth depth where a
sequence has it), after median scaling, since monocular video fixes depth only up to scale.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from medpeft.config import Config, ConfigError
from medpeft.data.sequences import FrameSequence, SequenceDataset, read_sequences, samples
from medpeft.models.reprojection import pose_matrix, reproject
from medpeft.tasks.base import Splits, register_task
from medpeft.tasks.depth import DepthTask
from medpeft.tasks.selfsup_loss import (
    automask,
    edge_aware_smoothness,
    masked_mean,
    min_over_sources,
    photometric_error,
)

POSE_MEAN, POSE_STD = 0.45, 0.225  # monodepth2's input scaling of the pose network


def split_sequences(
    sequences: list[FrameSequence], fractions: tuple[float, float, float], seed: int
) -> dict[str, list[FrameSequence]]:
    """Whole sequences to train / val / test when there are enough (frames of one video never straddle
    splits); with fewer sequences than non-empty splits, each sequence is cut into consecutive parts."""
    needed = sum(f > 0 for f in fractions)
    if len(sequences) >= needed:
        order = np.random.default_rng(seed).permutation(len(sequences))
        n = len(sequences)
        counts = [max(1, round(f * n)) if f > 0 else 0 for f in fractions[1:]]
        n_train = n - sum(counts)
        if n_train < 1:
            raise ConfigError(f"{n} sequences cannot be split {list(fractions)} with a training sequence")
        picked = [sequences[i] for i in order]
        return {
            "train": picked[:n_train],
            "val": picked[n_train : n_train + counts[0]],
            "test": picked[n_train + counts[0] :],
        }
    parts: dict[str, list[FrameSequence]] = {"train": [], "val": [], "test": []}
    for seq in sequences:
        n = len(seq.frames)
        bounds = np.cumsum([0] + [round(f * n) for f in fractions])
        bounds[-1] = n
        for name, lo, hi in zip(parts, bounds[:-1], bounds[1:], strict=True):
            if hi > lo:
                parts[name].append(
                    FrameSequence(
                        f"{seq.name}[{lo}:{hi}]",
                        seq.frames[lo:hi],
                        seq.intrinsics[lo:hi],
                        seq.depth[lo:hi],
                        seq.masks[lo:hi],
                    )
                )
    return parts


@register_task
class SelfSupDepthTask(DepthTask):
    """Photometric reprojection loss over scales (``selfsup`` config), AbsRel for checkpoints."""

    name = "selfsup_depth"
    terms = ("photometric", "smoothness")  # scored and selected as DepthTask is: AbsRel, lower is better

    def splits(self, root: Path | None = None) -> Splits:
        root = root or self.cfg.data.root
        if root is None:
            raise ConfigError("data.root is not set: point it at a folder of sequences (<sequence>/images/)")
        offsets = self.cfg.selfsup.offsets
        parts = split_sequences(read_sequences(Path(root)), self.cfg.data.split, self.cfg.data.seed)
        out = {k: samples(v, offsets) if v else [] for k, v in parts.items()}
        return Splits(out["train"], out["val"], out["test"], [])

    @property
    def frame_size(self) -> tuple[int, int]:
        h = int(self.cfg.model.image_size)
        return h, int(self.cfg.selfsup.image_width or h)

    def dataset(self, records: list[Any], label_names: list[str], train: bool) -> Dataset:
        h, w = self.frame_size
        return SequenceDataset(
            records,
            h,
            w,
            depth_scale=self.cfg.depth.scale,
            hflip_p=self.cfg.data.augment.hflip_p if train else 0.0,
            seed=self.cfg.train.seed,
        )

    def loss(
        self, model: nn.Module, batch: dict[str, Any], step: int, micro: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return selfsup_loss(_unwrap(model), batch, self.cfg)

    def describe(self, score: float) -> str:
        if math.isnan(score):
            return "validation: no ground-truth depth in the validation frames (no AbsRel)"
        return f"validation AbsRel {score:.4f} (median-scaled)"


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def selfsup_loss(
    model: nn.Module, batch: dict[str, Any], cfg: Config
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of a batch: per scale, the automasked per-pixel minimum of the photometric error over
    the warped source frames plus weighted edge-aware smoothness; averaged over scales."""
    s = cfg.selfsup
    target, sources, k = batch["target_rgb"], batch["source_rgb"], batch["intrinsics"]
    mask = batch["mask"].bool()
    disps = model.disparities(batch["image"])
    poses = []
    for j in range(sources.shape[1]):
        axis_angle, translation = model.pose(
            (target - POSE_MEAN) / POSE_STD, (sources[:, j] - POSE_MEAN) / POSE_STD
        )
        poses.append(pose_matrix(axis_angle, translation))
    identity = None
    if s.automask:
        identity = min_over_sources(
            [
                photometric_error(sources[:, j], target, s.photometric, s.weight)
                for j in range(sources.shape[1])
            ]
        )
    photometric = smoothness = 0.0
    for scale, disp in enumerate(disps):
        depth = 1.0 / disp
        errors = [
            photometric_error(
                reproject(sources[:, j], depth, poses[j], k)[0], target, s.photometric, s.weight
            )
            for j in range(sources.shape[1])
        ]
        reprojection = min_over_sources(errors)
        keep = mask & automask(reprojection, identity) if identity is not None else mask
        photometric = photometric + masked_mean(reprojection, keep)
        smoothness = smoothness + edge_aware_smoothness(disp, target) / (2**scale)
    photometric, smoothness = photometric / len(disps), smoothness / len(disps)
    total = photometric + s.smoothness * smoothness
    return total, {"photometric": float(photometric.detach()), "smoothness": float(smoothness.detach())}
