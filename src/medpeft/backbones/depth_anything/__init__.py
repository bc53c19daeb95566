"""Depth Anything V2 (transformers ``DepthAnythingForDepthEstimation``) as a monocular depth backbone."""

from __future__ import annotations

from pathlib import Path

from medpeft.backbones.hub import saved_model_type
from medpeft.backbones.registry import Backbone, register_backbone

from .convert import check_size
from .loading import HUB_IDS, load_depth_anything
from .model import DEPTH_ANYTHING_TARGETS, DepthEstimator
from .presets import PRESET_NAMES


def _claims(source: str) -> bool:
    return (
        source in PRESET_NAMES
        or source in HUB_IDS
        or source.lower().startswith("depth-anything/")
        or saved_model_type(source) == "depth_anything"
        or Path(source).name.startswith("depth_anything")
    )


DEPTH_ANYTHING = register_backbone(
    Backbone(
        name="depth_anything",
        task="depth",
        other_tasks=("selfsup_depth",),
        load=load_depth_anything,
        wrap=DepthEstimator,
        check_size=check_size,
        claims=_claims,
        targets=DEPTH_ANYTHING_TARGETS,
        default_image_size=518,
        presets=PRESET_NAMES,
    )
)

__all__ = ["DEPTH_ANYTHING", "DepthEstimator", "load_depth_anything"]
