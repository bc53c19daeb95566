"""Named `Sam2Config` presets (random init) and SAM2's image-size rule.

- ``sam2-tiny``: a toy Hiera (4 stages of 1-2 blocks, widths 16-128) for tests (seconds per step).
- ``sam2-mini``: trainable on a 2-core CPU at 256x256 (Hiera widths 48-384, 7 blocks; decoder 128).
- ``sam2.1-hiera-tiny|small|base-plus|large``: the published architectures, random init (benchmarks);
  their weights come from the hub (``facebook/sam2.1-hiera-*``) or from original
  checkpoints (:func:`medpeft.backbones.sam2.convert.sam2_config_from_original`).

Hiera downsamples by 4, 8, 16 and 32, so the image size is a multiple of 32; the FPN feature sizes
(S/4, S/8, S/16) and the prompt encoder's image size are written consistently with it.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import Sam2Config

from medpeft.backbones.hub import check_multiple

SIZE_MULTIPLE = 32

PRESETS: dict[str, dict[str, Any]] = {
    "sam2-tiny": {
        "hiera": {
            "hidden_size": 16,
            "blocks_per_stage": [1, 1, 2, 1],
            "embed_dim_per_stage": [16, 32, 64, 128],
            "num_attention_heads_per_stage": [1, 1, 2, 2],
            "window_size_per_stage": [4, 4, 4, 4],
            "global_attention_blocks": [3],
            "window_positional_embedding_background_size": [4, 4],
        },
        "fpn": 32,
        "decoder": {"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
    },
    "sam2-mini": {
        "hiera": {
            "hidden_size": 48,
            "blocks_per_stage": [1, 2, 3, 1],
            "embed_dim_per_stage": [48, 96, 192, 384],
            "num_attention_heads_per_stage": [1, 2, 4, 8],
            "window_size_per_stage": [8, 4, 8, 8],
            "global_attention_blocks": [5],
            "window_positional_embedding_background_size": [7, 7],
        },
        "fpn": 128,
        "decoder": {
            "hidden_size": 128,
            "mlp_dim": 1024,
            "num_attention_heads": 4,
            "iou_head_hidden_dim": 128,
        },
    },
}
# the published SAM2.1 architectures, random init (for benchmarks; weights come from the hub or .pt files)
PUBLISHED: dict[str, str] = {
    "sam2.1-hiera-tiny": "tiny",
    "sam2.1-hiera-small": "small",
    "sam2.1-hiera-base-plus": "base_plus",
    "sam2.1-hiera-large": "large",
}
PRESET_NAMES: tuple[str, ...] = (*PRESETS, *PUBLISHED)


def check_image_size(image_size: int) -> int:
    """``image_size`` if a positive multiple of 32, else an error naming the nearest valid sizes."""
    return check_multiple(image_size, SIZE_MULTIPLE, "SAM2")


def with_image_size(config: Sam2Config, image_size: int) -> Sam2Config:
    """Copy of ``config`` whose Hiera input, FPN feature sizes and prompt encoder agree on ``image_size``."""
    check_image_size(image_size)
    config = copy.deepcopy(config)
    vision = config.vision_config
    vision.backbone_config.image_size = [image_size, image_size]
    vision.backbone_feature_sizes = [[image_size // s, image_size // s] for s in (4, 8, 16)]
    config.prompt_encoder_config.image_size = image_size
    config.mask_decoder_config.dynamic_multimask_via_stability = False  # training and eval decode alike
    return config


def preset_config(name: str, image_size: int = 256) -> Sam2Config:
    """The `Sam2Config` of preset ``name`` at ``image_size`` (a multiple of 32)."""
    if name in PUBLISHED:
        from .convert import sam2_config_from_original

        return with_image_size(sam2_config_from_original(PUBLISHED[name], image_size), image_size)
    if name not in PRESETS:
        raise ValueError(f"unknown SAM2 preset {name!r}; valid presets: {', '.join(PRESET_NAMES)}")
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

    spec = copy.deepcopy(PRESETS[name])
    hiera = Sam2HieraDetConfig(
        **spec["hiera"], num_attention_heads=spec["hiera"]["num_attention_heads_per_stage"][0]
    )
    vision = Sam2VisionConfig(
        backbone_config=hiera,
        backbone_channel_list=list(reversed(spec["hiera"]["embed_dim_per_stage"])),
        fpn_hidden_size=spec["fpn"],
    )
    config = Sam2Config(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": spec["fpn"], "image_size": image_size, "patch_size": 16},
        mask_decoder_config=spec["decoder"],
    )
    return with_image_size(config, image_size)
