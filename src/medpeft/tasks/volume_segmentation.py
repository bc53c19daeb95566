"""Promptable 3D segmentation (SegVol): whole volumes, text / box / point prompts, Dice + BCE.

Training samples a prompt mode per micro-batch from ``prompts.train_modes`` (for volumes also ``text``,
``text+box``, ``text+point``: SegVol trains on such combinations); validation scores mean Dice of the
zoom-out view under ``prompts.eval_mode``. Full-resolution inference (zoom-out-zoom-in or a sliding
window) is ``medpeft evaluate --volumes`` and ``medpeft predict``.
"""

from __future__ import annotations

from torch.utils.data import Dataset

from medpeft.config import Config, ConfigError
from medpeft.data.splits import load_split_file
from medpeft.data.volume_dataset import VolumeCase, VolumeDataset, dataset_cases, source_cases, split_cases
from medpeft.tasks.base import PredictionWriter, Splits, register_task
from medpeft.tasks.segmentation import SegmentationTask


def volume_splits(cfg: Config) -> Splits:
    """Cases of ``data.root`` (a volume dataset; split by subject, or by ``data.split_file``) or of every
    volume source, each split by subject."""
    if cfg.data.root is not None:
        cases, labels = dataset_cases(cfg.data.root, cfg.data.window)
        if cfg.data.split_file is not None:  # {"train": [file names], "val": [...], "test": [...]}
            parts = load_split_file(cfg.data.split_file, cases)
        else:
            parts = split_cases(cases, cfg.data.split, cfg.data.seed)
        return Splits(parts["train"], parts["val"], parts["test"], labels)
    if not cfg.data.sources:
        raise ConfigError("data.root is not set: point it at a volume dataset (or list data.sources)")
    splits = Splits([], [], [], [])
    for i, source in enumerate(cfg.data.sources):
        cases, names = source_cases(source)
        parts = split_cases(cases, source.split or cfg.data.split, cfg.data.seed + i)
        splits.train += parts["train"] * source.repeat
        splits.val += parts["val"]
        splits.test += parts["test"]
        splits.label_names += [n for n in names if n not in splits.label_names]
    return splits


@register_task
class VolumeSegmentationTask(SegmentationTask):
    """3D promptable segmentation on whole volumes (see the module doc): the segmentation task's loss and
    validation on volume items."""

    name = "volume_segmentation"

    def roi(self) -> tuple[int, int, int]:
        from medpeft.backbones.registry import get_backbone

        shape = get_backbone(str(self.cfg.model.backbone)).input_shape
        assert shape is not None, "a volume backbone declares its input shape"
        return shape(self.cfg.model.base, int(self.cfg.model.image_size))

    def splits(self) -> Splits:
        return volume_splits(self.cfg)

    def dataset(self, records: list[VolumeCase], label_names: list[str], train: bool) -> Dataset:
        c = self.cfg
        return VolumeDataset(
            records,
            label_names,
            self.roi(),
            train,
            zoom_in=c.data.zoom_in,
            box_jitter=c.prompts.box_jitter,
            n_pos_points=c.prompts.n_pos_points,
            n_neg_points=c.prompts.n_neg_points,
            classes_per_image=c.data.classes_per_image,
            seed=c.train.seed,
            rotate_p=c.data.augment.rotate_p,
            rotate_max_deg=c.data.augment.rotate_max_deg,
        )

    def prediction_writer(self) -> PredictionWriter:
        raise ConfigError(
            "a 3D model predicts volumes: medpeft predict RUN volume.nii.gz (or a folder of them)"
        )

    def describe(self, score: float) -> str:
        return f"validation Dice {score:.4f} (zoom-out view, {self.cfg.prompts.eval_mode} prompts)"
