"""Supervised monocular depth: fine-tune Depth Anything on RGB + depth pairs, select checkpoints by AbsRel.

Relative models predict affine-invariant disparity, so they train with the scale-and-shift-invariant loss
against the ground-truth disparity (1 / depth) and are scored after aligning to it; metric models
predict metres, train with SILog and are scored as they are.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medpeft.config import Config, ConfigError
from medpeft.data.depth import (
    DepthDataset,
    DepthRecord,
    colorize_depth,
    read_depth_folder,
    write_depth_picture,
    write_depth_png16,
)
from medpeft.data.splits import load_split_file, split_records
from medpeft.data.transforms import model_input, undo_resize
from medpeft.metrics.depth import depth_metrics, median_scale, valid_depth_mask
from medpeft.tasks.base import PredictionWriter, Splits, Task, register_task
from medpeft.tasks.depth_loss import align_scale_shift, silog_loss, ssi_loss

METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


def disparity(depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1 / depth where valid, 0 elsewhere."""
    return torch.where(valid, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))


def resolve_align(kind: str, align: str) -> str:
    """``auto``: scale and shift for relative (disparity) output, median scaling for self-supervised
    (depth up to scale), none for metric."""
    if align != "auto":
        return align
    return {"relative": "scale_shift", "selfsup": "median"}.get(kind, "none")


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

    def splits(self, root: Path | None = None) -> Splits:
        """The configured data (or another dataset ``root``) split as configured."""
        return build_depth_splits(self.cfg, root)

    def dataset(self, records: list[Any], label_names: list[str], train: bool) -> Dataset:
        return DepthDataset(
            records,
            self.cfg.model.image_size,
            scale=self.cfg.depth.scale,
            hflip_p=self.cfg.data.augment.hflip_p if train else 0.0,
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
                d = self.cfg.depth
                valid = valid_depth_mask(gt, batch["valid"].to(model.device), d.min_depth, d.max_depth)
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

    def prediction_writer(self) -> PredictionWriter:
        return DepthWriter(
            self.cfg.model.image_size, self.cfg.depth.scale, normalize_mode=self.cfg.data.normalize
        )

    def describe(self, score: float) -> str:
        return f"validation AbsRel {score:.4f}"


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel


@torch.no_grad()
def evaluate_depth(task: DepthTask, model: nn.Module, dataset: DepthDataset, out_dir: Path) -> dict[str, Any]:
    """Score every image (``per_image.csv``), summarise (``summary.json``: mean and std of each metric) and
    draw the best, median and worst images by AbsRel (image | ground truth | prediction, one colour scale)."""
    import csv
    import json

    rows = task.scores(model, dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "per_image.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["name", *METRICS])
        w.writeheader()
        w.writerows(rows)
    summary: dict[str, Any] = {
        "task": task.name,
        "images": len(rows),
        "kind": model.kind,
        "align": resolve_align(model.kind, task.cfg.depth.align),
        "mean": {m: float(np.mean([r[m] for r in rows])) if rows else math.nan for m in METRICS},
        "std": {m: float(np.std([r[m] for r in rows])) if rows else math.nan for m in METRICS},
    }
    groups = sorted({r["name"].rsplit("/", 1)[0] for r in rows if "/" in r["name"]})
    if groups:  # video frames (<sequence>/<frame>): each sequence on its own too
        summary["per_sequence"] = {
            g: {m: float(np.mean([r[m] for r in rows if r["name"].rsplit("/", 1)[0] == g])) for m in METRICS}
            for g in groups
        }
    ranked = sorted(rows, key=lambda r: r["abs_rel"])
    cases = {"best": ranked[0], "median": ranked[len(ranked) // 2], "worst": ranked[-1]} if ranked else {}
    summary["pictures"] = {}
    index = {dataset.records[i].name: i for i in range(len(dataset))}
    for case, row in cases.items():
        path = out_dir / "pictures" / f"{case}-{row['name']}.png"
        _draw_case(task, model, dataset, index[row["name"]], path)
        summary["pictures"][case] = {
            "name": row["name"],
            "abs_rel": row["abs_rel"],
            "file": str(path.relative_to(out_dir)),
        }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _draw_case(task: DepthTask, model: nn.Module, dataset: DepthDataset, i: int, path: Path) -> None:
    from PIL import Image

    item = dataset[i]
    image, gt, valid = item["image"][None].to(model.device), item["depth"][None], item["valid"][None]
    d = task.cfg.depth
    pred = to_depth(model(image).cpu(), gt, valid, model.kind, d.align, d.min_depth)[0, 0].numpy()
    g = gt[0, 0].numpy()
    lo, hi = np.percentile(g[g > 0], [2, 98]) if (g > 0).any() else (None, None)
    shown = item["image"].permute(1, 2, 0).numpy()
    shown = ((shown - shown.min()) / max(float(np.ptp(shown)), 1e-6) * 255).astype(np.uint8)
    panels = [shown, colorize_depth(g, lo, hi), colorize_depth(pred, lo, hi)]
    picture = Image.fromarray(np.concatenate(panels, axis=1))
    zoom = max(1, 256 // g.shape[0])  # small inputs are drawn larger, pixels kept sharp
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.resize((picture.width * zoom, picture.height * zoom), Image.NEAREST).save(path)


def format_depth_table(summary: dict[str, Any]) -> str:
    """One line per metric: mean and std over images."""
    lines = [f"depth ({summary['kind']}, align {summary['align']}), {summary['images']} images"]
    lines += [f"{m:<10}{summary['mean'][m]:>10.4f} +- {summary['std'][m]:.4f}" for m in METRICS]
    for name, means in summary.get("per_sequence", {}).items():
        lines.append(
            f"  {name}: AbsRel {means['abs_rel']:.4f}, RMSE {means['rmse']:.4f}, d<1.25 {means['a1']:.3f}"
        )
    return "\n".join(lines)


class DepthWriter(PredictionWriter):
    """16-bit PNG depth (``depth/``) and a colour-mapped picture (``pictures/``) at the input's size.

    Metric models write depth / ``scale`` (so :func:`medpeft.data.depth.read_depth` with the same
    scale reads metres back). Relative models predict affine-invariant disparity, which has no metric
    depth: they write that disparity scaled to 1-65535 per image, and ``predictions.json`` says so.
    """

    task = "depth"

    def __init__(
        self, image_size: int, scale: float, resize_mode: str = "resize", normalize_mode: str = "sam"
    ) -> None:
        self.image_size, self.scale = image_size, scale
        self.resize_mode, self.normalize_mode = resize_mode, normalize_mode

    def describe(self, model: nn.Module) -> dict[str, Any]:
        if model.kind == "metric":
            return {"depth_png": f"metric depth; metres = value * {self.scale}"}
        return {"depth_png": "relative disparity (larger = nearer), scaled per image to 1-65535; not metric"}

    def write(
        self, model: nn.Module, image: np.ndarray, entry: Any, out_dir: Path, name: str
    ) -> dict[str, Any]:
        tensor, meta = model_input(image, self.image_size, self.resize_mode, self.normalize_mode)
        output = undo_resize(model(tensor.to(model.device))[0].float().cpu(), meta, "bilinear").numpy()[0]
        if model.kind == "metric":
            write_depth_png16(out_dir / "depth" / name, output, self.scale)
            picture = output
        else:
            span = max(float(output.max() - output.min()), 1e-12)
            write_depth_png16(out_dir / "depth" / name, 1.0 + 65534.0 * (output - output.min()) / span, 1.0)
            picture = 1.0 / np.maximum(
                output - output.min() + 1e-3 * span, 1e-12
            )  # nearer = smaller, as depth
        write_depth_picture(out_dir / "pictures" / name, picture)
        return {"depth": f"depth/{name}", "picture": f"pictures/{name}"}

    def finish(self, out_dir: Path, report: dict[str, Any], columns: int = 8) -> dict[str, Any]:
        """``strip.png``: up to ``columns`` frames evenly spaced over the inputs (in name order, so a video's
        frames in time), each above its depth picture, to see depth follow the video."""
        from PIL import Image

        entries = sorted(report["images"], key=lambda e: Path(e["image"]).name)
        if not entries:
            return {}
        picks = [
            entries[i]
            for i in np.linspace(0, len(entries) - 1, min(columns, len(entries))).round().astype(int)
        ]
        tiles = []
        for e in picks:
            frame = Image.open(e["image"]).convert("RGB")
            picture = Image.open(out_dir / e["picture"]).convert("RGB").resize(frame.size)
            column = Image.new("RGB", (frame.width, 2 * frame.height))
            column.paste(frame, (0, 0))
            column.paste(picture, (0, frame.height))
            scale = 160 / column.width
            tiles.append(column.resize((160, max(1, round(column.height * scale)))))
        strip = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)))
        x = 0
        for t in tiles:
            strip.paste(t, (x, 0))
            x += t.width
        strip.save(out_dir / "strip.png")
        return {"strip": "strip.png"}
