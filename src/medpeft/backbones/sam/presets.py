"""Named `SamConfig` presets (random init) and image-size handling.

Presets:

- ``sam-tiny``: a ~0.1M-parameter toy for tests (width 32, 2 blocks; 103,180 parameters at 256).
- ``sam-mini``: the SAM architecture made narrow and shallow enough to train on a 2-core CPU at
  256x256: encoder width 192, 6 blocks, 3 heads, global attention at [2, 5], window 8, neck 128;
  decoder width 128, 2 layers, 4 heads. 4,077,056 parameters at 256x256 (image encoder 3,054,144,
  prompt encoder 3,404 incl. the tied positional-encoding matrix, mask decoder 1,019,508).
- ``sam-vit-base`` / ``sam-vit-large`` / ``sam-vit-huge``: the published SAM architectures.

The image size is any multiple of the patch size (16); it is written consistently into
``vision_config.image_size``, ``prompt_encoder_config.image_size`` and
``prompt_encoder_config.image_embedding_size`` (= image_size // patch_size).
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import SamConfig

from medpeft.backbones.hub import check_multiple

PATCH_SIZE = 16

_SAM_DECODER: dict[str, Any] = {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 8}


def _sam(width: int, depth: int, heads: int, global_attn: list[int]) -> dict[str, dict[str, Any]]:
    vision = {
        "hidden_size": width,
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "mlp_dim": 4 * width,
        "global_attn_indexes": global_attn,
        "window_size": 14,
        "output_channels": 256,
        "num_pos_feats": 128,
    }
    decoder = {**_SAM_DECODER, "mlp_dim": 2048, "iou_head_hidden_dim": 256}
    return {"vision": vision, "prompt": {"hidden_size": 256, "mask_input_channels": 16}, "decoder": decoder}


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "sam-tiny": {
        "vision": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_dim": 64,
            "global_attn_indexes": [1],
            "window_size": 4,
            "output_channels": 32,
            "num_pos_feats": 16,
        },
        "prompt": {"hidden_size": 32, "mask_input_channels": 16},
        "decoder": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_dim": 64,
            "iou_head_hidden_dim": 32,
        },
    },
    "sam-mini": {
        "vision": {
            "hidden_size": 192,
            "num_hidden_layers": 6,
            "num_attention_heads": 3,
            "mlp_dim": 768,
            "global_attn_indexes": [2, 5],
            "window_size": 8,
            "output_channels": 128,
            "num_pos_feats": 64,
        },
        "prompt": {"hidden_size": 128, "mask_input_channels": 16},
        "decoder": {
            "hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "mlp_dim": 1024,
            "iou_head_hidden_dim": 128,
        },
    },
    "sam-vit-base": _sam(768, 12, 12, [2, 5, 8, 11]),
    "sam-vit-large": _sam(1024, 24, 16, [5, 11, 17, 23]),
    "sam-vit-huge": _sam(1280, 32, 16, [7, 15, 23, 31]),
}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def check_image_size(image_size: int, patch_size: int = PATCH_SIZE) -> int:
    """Return ``image_size`` if it is a positive multiple of ``patch_size``, else name the nearest valid sizes."""
    return check_multiple(image_size, patch_size, "SAM")


def with_image_size(config: SamConfig, image_size: int) -> SamConfig:
    """Copy of ``config`` set to ``image_size`` in the vision and prompt-encoder configs."""
    patch = config.vision_config.patch_size
    if not isinstance(patch, int) or patch != config.prompt_encoder_config.patch_size:
        raise ValueError(f"unsupported patch size {patch!r}: expected one square int patch size")
    check_image_size(image_size, patch)
    config = copy.deepcopy(config)
    config.vision_config.image_size = image_size
    config.prompt_encoder_config.image_size = image_size
    config.prompt_encoder_config.image_embedding_size = image_size // patch
    return config


def preset_config(name: str, image_size: int = 256) -> SamConfig:
    """The `SamConfig` of preset ``name`` at ``image_size`` (a multiple of 16)."""
    if name not in PRESETS:
        raise ValueError(f"unknown SAM preset {name!r}; valid presets: {', '.join(PRESET_NAMES)}")
    check_image_size(image_size)
    spec = copy.deepcopy(PRESETS[name])
    size = {"image_size": image_size, "patch_size": PATCH_SIZE}
    return SamConfig(
        vision_config={**spec["vision"], **size},
        prompt_encoder_config={**spec["prompt"], **size},
        mask_decoder_config=spec["decoder"],
    )
