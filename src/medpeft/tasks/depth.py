"""Supervised monocular depth: fine-tune Depth Anything on RGB + depth pairs, select checkpoints by AbsRel.

Relative models predict affine-invariant disparity, so they train with the scale-and-shift-invariant loss
against the ground-truth disparity (1 / depth) and are scored after aligning to it; metric models
predict metres, train with SILog and are scored as they are.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medpeft.config import Config, ConfigError
from medpeft.data.depth import DepthDataset, DepthRecord, read_depth_folder
from medpeft.data.splits import load_split_file, split_records
from medpeft.metrics.depth import depth_metrics, median_scale
from medpeft.tasks.base import Splits, Task, register_task
from medpeft.tasks.depth_loss import align_scale_shift, silog_loss, ssi_loss

METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


def disparity(depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1 / depth where valid, 0 elsewhere."""
    return torch.where(valid, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))


def resolve_align(kind: str, align: str) -> str:
    """``auto``: scale and shift for relative (disparity) output, none for metric."""
    if align != "auto":
        return align
    return "scale_shift" if kind == "relative" else "none"


def to_depth(
    output: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, kind: str, align: str, min_depth: float
) -> torch.Tensor:
    """The model's output [B, 1, H, W] as depth in the ground truth's units, aligned as configured.

    ``scale_shift``: fit ``s * disparity + t`` to the ground-truth disparity over valid pixels, invert;
    ``median``: invert, then scale each image by median(gt) / median(pred); ``none``: output is depth.
    """
    align = resolve_align(kind, align)
    if align == "none":
        return output.clamp_min(min_depth)
    disp = output
    if align == "scale_shift":
        scale, shift = align_scale_shift(output, disparity(gt, valid), valid)
        disp = output * scale.view(-1, 1, 1, 1) + shift.view(-1, 1, 1, 1)
    depth = 1.0 / disp.clamp_min(1.0 / 1e4)
    if align == "median":
        depth = torch.stack([median_scale(d, g, m)[0] for d, g, m in zip(depth, gt, valid, strict=True)])
    return depth.clamp_min(min_depth)


def build_depth_splits(cfg: Config, root: Path | None = None) -> Splits:
    """``images/`` + ``depth/`` pairs under ``data.root``, split like segmentation data."""
    root = root or cfg.data.root
    if root is None:
        raise ConfigError("data.root is not set: point it at a folder with images/ and depth/ subfolders")
    records: list[DepthRecord] = read_depth_folder(Path(root))
    if cfg.data.split_file is not None:
        parts = load_split_file(cfg.data.split_file, records)
    else:
        parts = split_records(records, cfg.data.split, seed=cfg.data.seed)
    return Splits(parts["train"], parts["val"], parts["test"], [])


@register_task
class DepthTask(Task):
    """The loss follows the model's kind (``depth.loss: auto``); validation scores mean per-image AbsRel."""

    name = "depth"
    metric = "abs_rel"
    higher_is_better = False
    terms = ("ssi", "silog")

    def splits(self) -> Splits:
        return build_depth_splits(self.cfg)

    def dataset(self, records: list[Any], label_names: list[str], train: bool) -> Dataset:
        return DepthDataset(
            records,
            self.cfg.model.image_size,
            scale=self.cfg.depth.scale,
            augment=train and self.cfg.data.augment.hflip_p > 0,
            seed=self.cfg.train.seed,
        )

    def loss_name(self, model: nn.Module) -> str:
        if self.cfg.depth.loss != "auto":
            return self.cfg.depth.loss
        return "ssi" if getattr(model, "kind", "relative") == "relative" else "silog"

    def loss(
        self, model: nn.Module, batch: dict[str, Any], step: int, micro: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        output = model(batch["image"])
        valid = batch["valid"].bool()
        if self.loss_name(_unwrap(model)) == "ssi":
            value = ssi_loss(output, disparity(batch["depth"], valid), valid)
            return value, {"ssi": float(value.detach())}
        value = silog_loss(output, batch["depth"], valid, variance_focus=self.cfg.depth.silog_lambda)
        return value, {"silog": float(value.detach())}

    @torch.no_grad()
    def scores(self, model: nn.Module, dataset: Dataset) -> list[dict[str, float]]:
        """Per-image depth metrics (``name`` plus :data:`METRICS`)."""
        was_training = model.training
        model.eval()
        rows: list[dict[str, Any]] = []
        try:
            for batch in DataLoader(dataset, batch_size=self.cfg.train.batch_size, shuffle=False):
                image, gt = batch["image"].to(model.device), batch["depth"].to(model.device)
                valid = batch["valid"].to(model.device).bool()
                d = self.cfg.depth
                valid &= gt > d.min_depth
                if d.max_depth is not None:
                    valid &= gt < d.max_depth
                pred = to_depth(model(image), gt, valid, model.kind, d.align, d.min_depth)
                if d.max_depth is not None:
                    pred = pred.clamp_max(d.max_depth)
                for i, name in enumerate(batch["name"]):
                    if not bool(valid[i].any()):
                        continue
                    rows.append({"name": name, **depth_metrics(pred[i], gt[i], mask=valid[i])})
        finally:
            model.train(was_training)
        return rows

    def validate(self, model: nn.Module, dataset: Dataset) -> float:
        rows = self.scores(model, dataset)
        return sum(r["abs_rel"] for r in rows) / len(rows) if rows else math.nan

    def describe(self, score: float) -> str:
        return f"validation AbsRel {score:.4f}"


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel
