"""The released SegVol checkpoint (``SegVol_v1.pth``: ``{"model": state_dict}`` saved from
DistributedDataParallel, so every key starts ``module.``; built on MONAI 0.9) -> :class:`SegVolModel` keys
on MONAI 1.6, plus the text tower's weights.

What changes:
- ``module.`` is stripped (the shared ``unwrap_checkpoint``).
- The encoder was built with ``pos_embed="perceptron"`` (MONAI 0.9's name of ``proj_type``): a ``Linear``
  over flattened ``(p1 p2 p3 c)`` patches. It becomes the equivalent ``Conv3d`` of ``proj_type="conv"``
  (same function; what the S-SAM SVD and the steerable side-tuning act on).
- MONAI 1.6's ``TransformerBlock`` always holds a ``norm_cross_attn`` LayerNorm (unused without cross
  attention); 0.9 had none, so it is filled with its initial identity.
- The mask decoder's SAM names map as segment-anything's do (``sam.convert.rename_key``); the 3D
  upscaling keeps its indices (0, 1, 3).
- ``prompt_encoder.mask_downscaling.*`` (2D convolutions the 3D model never calls) are dropped.
- ``text_encoder.clip_text_model.text_model.*`` (a CLIP text model saved by transformers 4.x, which nested
  it under ``text_model``; 5.x does not) and ``text_encoder.dim_align.*`` (512 -> 768) are returned apart:
  they become the frozen text model and the class prompt's projection.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from medpeft.backbones.sam.convert import mlp_depths, rename_key, unwrap_checkpoint

from .model import SegVolConfig

_PATCH = "image_encoder.patch_embedding.patch_embeddings"
_DROP = re.compile(
    r"prompt_encoder\.mask_downscaling\..*|text_encoder\.clip_text_model\.text_model\.embeddings\.position_ids"
)
_SAME = re.compile(
    r"image_encoder\.(patch_embedding\.position_embeddings|blocks\.\d+\.(norm[12]|norm_cross_attn|attn\.(qkv|out_proj)|mlp\.linear[12])\.(weight|bias)|norm\.(weight|bias))"
    r"|prompt_encoder\.(pe_layer\.positional_encoding_gaussian_matrix|(point_embeddings\.\d+|not_a_point_embed|no_mask_embed)\.weight)"
    r"|mask_decoder\.(iou_token|mask_tokens)\.weight|mask_decoder\.txt_align_upscaled_embedding\.(weight|bias)"
)


def perceptron_to_conv(weight: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """A perceptron patch embedding's ``Linear`` weight ``[w, p1 p2 p3 c]`` as ``Conv3d`` ``[w, c, p1, p2, p3]``."""
    width, flat = weight.shape
    channels = flat // (patch[0] * patch[1] * patch[2])
    return weight.reshape(width, *patch, channels).permute(0, 4, 1, 2, 3).contiguous()


def is_released_segvol(sd: Mapping[str, Any]) -> bool:
    """Whether a state dict has the released SegVol layout (its perceptron patch embedding)."""
    return any(k.removeprefix("module.").startswith(f"{_PATCH}.1.") for k in sd)


def convert_segvol_state_dict(
    checkpoint: Any, config: SegVolConfig
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(model state dict, text state dict)`` of a released checkpoint (see the module doc); the text
    dict has ``clip.*`` (CLIPTextModel keys) and ``dim_align.*``. Unknown keys are an error."""
    sd = unwrap_checkpoint(checkpoint)
    depths = mlp_depths(list(sd))
    out: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if _DROP.fullmatch(key):
            continue
        if key == f"{_PATCH}.1.weight":
            out[f"{_PATCH}.weight"] = perceptron_to_conv(value, config.patch)
        elif key == f"{_PATCH}.1.bias":
            out[f"{_PATCH}.bias"] = value
        elif key.startswith("text_encoder.clip_text_model."):  # transformers 4.x nested text_model.*
            inner = key.removeprefix("text_encoder.clip_text_model.").removeprefix("text_model.")
            text["clip." + inner] = value
        elif key.startswith("text_encoder.dim_align."):
            text["dim_align." + key.removeprefix("text_encoder.dim_align.")] = value
        elif _SAME.fullmatch(key):
            out[key] = value
        elif key.startswith("mask_decoder.") and (renamed := rename_key(key, depths)) is not None:
            out[renamed] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unrecognised SegVol checkpoint keys ({len(unknown)}): {', '.join(unknown[:5])}")
    for i in range(config.layers):  # MONAI >= 1.4: an (unused) LayerNorm per block, identity-initialised
        prefix = f"image_encoder.blocks.{i}.norm_cross_attn"
        out.setdefault(f"{prefix}.weight", torch.ones(config.width))
        out.setdefault(f"{prefix}.bias", torch.zeros(config.width))
    return out, text
