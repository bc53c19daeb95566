"""Promptable segmentation: Dice + BCE (+ focal) loss under sampled prompt modes, Dice-selected checkpoints."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from medpeft.config import Config, ConfigError
from medpeft.data.dataset import SegmentationDataset
from medpeft.data.readers import read_dataset
from medpeft.data.records import ImageRecord
from medpeft.data.splits import load_split_file, split_records
from medpeft.models.prompts import Prompts
from medpeft.tasks.base import PredictionWriter, Splits, Task, register_task
from medpeft.tasks.segmentation_loss import SegmentationLoss


def build_splits(cfg: Config, root: Path | None = None) -> Splits:
    """Read the dataset (or the ``data.sources`` collection) and split it deterministically (or by ``data.split_file``)."""
    root = root or cfg.data.root
    if root is None and cfg.data.sources:
        from medpeft.data.collection import read_collection

        parts, labels = read_collection(cfg.data.sources, cfg.data.split, cfg.data.seed)
        if cfg.data.split_file is not None:
            parts = load_split_file(cfg.data.split_file, [r for p in parts.values() for r in p])
        return Splits(parts["train"], parts["val"], parts["test"], labels)
    if root is None:
        raise ConfigError(
            "data.root is not set: point it at a folder dataset or a SAM-Med2D json layout (or list data.sources)"
        )
    records, labels = read_dataset(
        Path(root),
        format=cfg.data.format,
        labels=cfg.data.labels,
        line_width=cfg.data.line_width,
        colour_tolerance=cfg.data.colour_tolerance,
    )
    if cfg.data.split_file is not None:
        parts = load_split_file(cfg.data.split_file, records)
    else:
        parts = split_records(records, cfg.data.split, seed=cfg.data.seed)
    return Splits(parts["train"], parts["val"], parts["test"], labels)


def build_dataset(
    cfg: Config, records: list[ImageRecord], labels: list[str], train: bool
) -> SegmentationDataset:
    """A dataset with training (sampled, augmented) or evaluation (deterministic) prompts."""
    return SegmentationDataset(
        records,
        labels,
        image_size=cfg.model.image_size,
        resize=cfg.data.resize,
        normalize=cfg.data.normalize,
        augment=cfg.data.augment if train else None,
        prompt_sampling="train" if train else "eval",
        box_jitter=cfg.prompts.box_jitter,
        n_pos_points=cfg.prompts.n_pos_points,
        n_neg_points=cfg.prompts.n_neg_points,
        seed=cfg.train.seed,
        cache=cfg.data.cache,
        classes_per_image=cfg.data.classes_per_image,
        depth_scale=cfg.depth.scale if reads_depth_files(cfg) else None,
    )


def reads_depth_files(cfg: Config) -> bool:
    """Whether the model takes a depth map file per image (``model.depth_guided.depth_source: file``)."""
    dg = cfg.model.depth_guided
    return dg is not None and dg.depth_source == "file"


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """Keyword inputs beyond images and prompts a batch carries for the model (depth maps)."""
    return {"depth_maps": batch["depth"]} if "depth" in batch else {}


def sample_mode(modes: dict[str, float], seed: int, step: int, micro: int) -> str:
    """Prompt mode for one micro-batch, reproducible from (seed, step, micro)."""
    rng = random.Random(seed * 1_000_003 + step * 1_009 + micro)
    names = list(modes)
    return rng.choices(names, weights=[modes[n] for n in names], k=1)[0]


def sample_click_rounds(cfg: Config, step: int, micro: int) -> int:
    """Simulated click rounds before one micro-batch's trained forward (0: none), reproducible from
    (seed, step, micro), so a resumed run draws the same."""
    p = cfg.prompts
    if not p.click_rounds:
        return 0
    rng = random.Random(cfg.train.seed * 1_000_003 + step * 1_009 + micro + 500_009)
    return rng.randint(1, p.click_rounds) if rng.random() < p.click_p else 0


@register_task
class SegmentationTask(Task):
    """Each micro-batch draws its prompt mode (box, point, box+point, auto) from ``prompts.train_modes``;
    validation scores mean Dice under ``prompts.eval_mode``."""

    name = "segmentation"
    metric = "dice"
    higher_is_better = True
    terms = ("dice", "bce", "focal")

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.loss_fn = SegmentationLoss(cfg.loss)

    def splits(self) -> Splits:
        return build_splits(self.cfg)

    def dataset(self, records: list[Any], label_names: list[str], train: bool) -> Dataset:
        return build_dataset(self.cfg, records, label_names, train)

    def loss(
        self, model: nn.Module, batch: dict[str, Any], step: int, micro: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        mode = sample_mode(self.cfg.prompts.train_modes, self.cfg.train.seed, step, micro)
        prompts = Prompts.from_batch(batch, mode)
        segmenter = getattr(model, "module", model)  # the cache and the rounds call the segmenter's parts
        embeddings = None  # the frozen encoder's output, stored: decode only
        if self.embedding_cache is not None:
            embeddings = self.embedding_cache.embeddings(segmenter, batch)
        rounds = sample_click_rounds(self.cfg, step, micro)
        if rounds:
            from medpeft.tasks.segmentation_clicks import click_rounds

            if not hasattr(segmenter, "mask_prompt") or model_inputs(batch):
                raise ValueError(
                    f"prompts.click_rounds = {self.cfg.prompts.click_rounds}: clicks are simulated with SAM's "
                    f"mask input, which {self.cfg.model.backbone} models (or depth-guided ones) do not take; "
                    "set it to 0"
                )
            prompts = click_rounds(segmenter, batch, prompts, rounds, embeddings)
        if embeddings is not None:
            logits = segmenter.segment(embeddings, prompts, tuple(batch["image"].shape[-2:]))
        else:
            logits = model(batch["image"], prompts, **model_inputs(batch))
        return self.loss_fn(logits, batch["masks"], batch.get("class_valid"))

    def validate(self, model: nn.Module, dataset: Dataset) -> float:
        from medpeft.tasks.segmentation_eval import validate

        return validate(model, dataset, self.cfg.prompts.eval_mode, self.cfg.train.batch_size)

    def prediction_writer(self) -> PredictionWriter:
        from medpeft.tasks.segmentation_predict import SegmentationWriter

        depth_scale = self.cfg.depth.scale if reads_depth_files(self.cfg) else None
        return SegmentationWriter(
            self.cfg.data.resize, self.cfg.data.normalize, self.cfg.eval.threshold, depth_scale
        )

    def describe(self, score: float) -> str:
        return f"validation Dice {score:.4f} ({self.cfg.prompts.eval_mode} prompts)"
