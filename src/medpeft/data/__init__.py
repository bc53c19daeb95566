"""2D data layer: dataset readers, transforms, prompt sampling, splits, the torch dataset, volumes."""

from .dataset import SegmentationDataset, collate
from .formats.folder import read_folder_dataset
from .formats.sammed2d import read_sammed2d_json
from .io import DataError, load_image, load_masks
from .prompt_sampling import center_point, jitter_box, mask_to_box, sample_points, tight_box
from .readers import read_dataset
from .records import ImageRecord
from .splits import load_split_file, split_records
from .transforms import AugmentConfig, augment, normalize, resize_longest_pad, resize_plain, undo_resize
from .volumes import export_slices, load_volume, window

__all__ = [
    "AugmentConfig",
    "DataError",
    "ImageRecord",
    "SegmentationDataset",
    "augment",
    "center_point",
    "collate",
    "export_slices",
    "jitter_box",
    "load_image",
    "load_masks",
    "load_split_file",
    "load_volume",
    "mask_to_box",
    "normalize",
    "read_dataset",
    "read_folder_dataset",
    "read_sammed2d_json",
    "resize_longest_pad",
    "resize_plain",
    "sample_points",
    "split_records",
    "tight_box",
    "undo_resize",
    "window",
]
