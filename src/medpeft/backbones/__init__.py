"""Backbones behind one registry: ``sam``, ``sam2``, ``depth_anything``, ``unet``."""

from medpeft.backbones.registry import (
    TARGET_NAMES,
    Backbone,
    available_backbones,
    backbone_for,
    get_backbone,
    register_backbone,
)

__all__ = [
    "TARGET_NAMES",
    "Backbone",
    "available_backbones",
    "backbone_for",
    "get_backbone",
    "register_backbone",
]
