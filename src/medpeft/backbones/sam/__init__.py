"""Segment Anything (transformers ``SamModel``) as a promptable segmentation backbone."""

from __future__ import annotations

from medpeft.backbones.hub import saved_model_type
from medpeft.backbones.registry import Backbone, register_backbone

from .bundled import BUNDLED_NAMES
from .loading import load_sam
from .presets import PRESET_NAMES, check_image_size
from .segmenter import SAM_TARGETS, SamSegmenter


def _claims(source: str) -> bool:
    return (
        source in PRESET_NAMES
        or source in BUNDLED_NAMES
        or saved_model_type(source) == "sam"
        or "/sam-vit" in source
        or "medsam" in source.lower()
    )


SAM = register_backbone(
    Backbone(
        name="sam",
        task="segmentation",
        load=load_sam,
        wrap=SamSegmenter,
        check_size=check_image_size,
        claims=_claims,
        targets=SAM_TARGETS,
        default_image_size=256,
        presets=PRESET_NAMES + BUNDLED_NAMES,
        prompt_dim=lambda base: int(base.config.prompt_encoder_config.hidden_size),
    )
)

__all__ = ["SAM", "SamSegmenter", "load_sam"]
