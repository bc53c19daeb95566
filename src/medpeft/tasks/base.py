"""What a task owns (data, loss, log columns, validation score, checkpoint criterion, prediction
writer) and the task registry.

The one training loop (:func:`medpeft.engine.trainer.train`) asks the configured task for its splits and
datasets, the loss of a batch, and a validation score; it selects the best checkpoint with the task's
``better``; ``medpeft predict`` writes through the task's :class:`PredictionWriter`. A new task is one
module that registers a :class:`Task` subclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset


@dataclass
class Splits:
    """Train/val/test records and the label names they share (none for depth)."""

    train: list[Any]
    val: list[Any]
    test: list[Any]
    label_names: list[str]


class Task:
    """Base class: subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    metric: ClassVar[str]  # the validation score's name, logged as ``val_<metric>``
    higher_is_better: ClassVar[bool]
    terms: ClassVar[tuple[str, ...]]  # loss terms logged per step

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.embedding_cache: Any = None  # set by the trainer when image embeddings are cached

    def splits(self) -> Splits:
        raise NotImplementedError

    def dataset(self, records: list[Any], label_names: list[str], train: bool) -> Dataset:
        raise NotImplementedError

    def loss(
        self, model: nn.Module, batch: dict[str, Any], step: int, micro: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward the batch and return the total loss and its logged terms."""
        raise NotImplementedError

    def validate(self, model: nn.Module, dataset: Dataset) -> float:
        raise NotImplementedError

    def better(self, score: float, best: float | None) -> bool:
        """Whether ``score`` improves on ``best`` (None: nothing yet)."""
        if best is None:
            return True
        return score > best if self.higher_is_better else score < best

    def prediction_writer(self) -> PredictionWriter:
        """What ``medpeft predict`` writes per image for this task."""
        raise NotImplementedError

    def describe(self, score: float) -> str:
        """The validation line shown after an epoch."""
        return f"validation {self.metric} {score:.4f}"


TASK_NAMES: tuple[str, ...] = ("segmentation", "depth", "selfsup_depth", "volume_segmentation")
_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator adding a task under its ``name``."""
    _TASKS[cls.name] = cls
    return cls


def make_task(cfg: Any) -> Task:
    """The task the config names (its ``task`` is resolved from the backbone when not set)."""
    from medpeft.tasks import depth, segmentation, selfsup_depth, volume_segmentation  # noqa: F401 - registration

    return _TASKS[cfg.task](cfg)


class PredictionWriter:
    """What one task writes per image; the prediction loop is shared."""

    task = "segmentation"

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Extra fields of ``predictions.json``."""
        return {}

    def read_prompts(self, path: Path | None, labels: list[str], images: list[Path]) -> dict[str, Any]:
        """Per-image prompts from ``--prompts`` (checked before anything is written); none by default."""
        if path is not None:
            from medpeft.data.io import DataError

            raise DataError(f"--prompts {path}: a {self.task} model takes no prompts")
        return {}

    def write(
        self, model: nn.Module, image: np.ndarray, entry: Any, out_dir: Path, name: str
    ) -> dict[str, Any]:
        """Predict one image, write its files under ``out_dir`` and return its ``predictions.json`` entry."""
        raise NotImplementedError

    def finish(self, out_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
        """After every image: write what spans them all; returns extra ``predictions.json`` fields."""
        return {}
