"""medpeft.metrics: segmentation overlap and surface metrics, depth metrics, and summaries."""

from .depth import (
    abs_rel,
    delta_accuracy,
    depth_metrics,
    median_scale,
    rmse,
    rmse_log,
    sq_rel,
    valid_depth_mask,
)
from .segmentation import binarize, dice_per_class, iou_per_class, summarize
from .surface import assd_per_class, hd95_per_class

__all__ = [
    "abs_rel",
    "assd_per_class",
    "binarize",
    "delta_accuracy",
    "depth_metrics",
    "dice_per_class",
    "hd95_per_class",
    "iou_per_class",
    "median_scale",
    "rmse",
    "rmse_log",
    "sq_rel",
    "summarize",
    "valid_depth_mask",
]
