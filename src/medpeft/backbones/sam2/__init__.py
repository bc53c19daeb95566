"""SAM2 (transformers ``Sam2Model``, image mode) as a promptable segmentation backbone."""

from __future__ import annotations

from pathlib import Path

from medpeft.backbones.hub import looks_like_path, saved_model_type
from medpeft.backbones.registry import Backbone, register_backbone

from .loading import HUB_IDS, load_sam2
from .presets import PRESET_NAMES, check_image_size
from .segmenter import SAM2_TARGETS, Sam2Segmenter


def _claims(source: str) -> bool:
    name = Path(source).name.lower()  # an original checkpoint: sam2.1_hiera_tiny.pt
    return (
        source in PRESET_NAMES
        or source in HUB_IDS
        or ("/" in source and not looks_like_path(source) and "sam2" in source.rsplit("/", 1)[1].lower())
        or saved_model_type(source) == "sam2"
        or (name.startswith("sam2") and name.endswith((".pt", ".pth")))
    )


SAM2 = register_backbone(
    Backbone(
        name="sam2",
        task="segmentation",
        load=load_sam2,
        wrap=Sam2Segmenter,
        check_size=check_image_size,
        claims=_claims,
        targets=SAM2_TARGETS,
        default_image_size=256,
        presets=PRESET_NAMES,
        prompt_dim=lambda base: int(base.config.prompt_encoder_config.hidden_size),
    )
)

__all__ = ["SAM2", "Sam2Segmenter", "load_sam2"]
