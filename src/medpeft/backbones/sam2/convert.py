"""Convert original facebookresearch/sam2 checkpoints to the ``transformers.Sam2Model`` key layout.

transformers ships no SAM2 converter in this version, so the mapping is hand-written here.
Only the image path is kept (Hiera trunk, FPN neck, prompt encoder, mask decoder, ``no_mem_embed``);
the video/memory modules of ``SAM2Base`` are dropped by an explicit prefix list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from transformers import (
    Sam2Config,
    Sam2HieraDetConfig,
    Sam2MaskDecoderConfig,
    Sam2PromptEncoderConfig,
    Sam2VisionConfig,
)

from medpeft.backbones.sam2.presets import check_image_size

# Video-only parts of SAM2Base that the image-only Sam2Model has no module for.
DROPPED_PREFIXES: tuple[str, ...] = (
    "memory_attention",
    "memory_encoder",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "mask_downsample",
    "obj_ptr_proj",
    "obj_ptr_tpos_proj",
    "no_obj_ptr",
    "no_obj_embed_spatial",
)

_P = r"(weight|bias)"
_ATTN = r"((?:layers\.\d+\.)?(?:self_attn|cross_attn_token_to_image|cross_attn_image_to_token|final_attn_token_to_image))"

# Ordered (original regex, target template) table; every pattern must match the whole key.
# "#N" marks layer N of an original ``MLP.layers`` list, resolved once the MLP depth is known
# (first -> proj_in, last -> proj_out, middle -> layers.N-1); "@N" marks a row to stack.
RULES: tuple[tuple[str, str], ...] = (
    # Hiera trunk
    (r"image_encoder\.trunk\.(pos_embed|pos_embed_window)", r"vision_encoder.backbone.\1"),
    (rf"image_encoder\.trunk\.patch_embed\.proj\.{_P}", r"vision_encoder.backbone.patch_embed.projection.\1"),
    (
        rf"image_encoder\.trunk\.blocks\.(\d+)\.norm([12])\.{_P}",
        r"vision_encoder.backbone.blocks.\1.layer_norm\2.\3",
    ),
    (
        rf"image_encoder\.trunk\.blocks\.(\d+)\.(attn\.qkv|attn\.proj|proj)\.{_P}",
        r"vision_encoder.backbone.blocks.\1.\2.\3",
    ),
    (
        rf"image_encoder\.trunk\.blocks\.(\d+)\.mlp\.layers\.(\d+)\.{_P}",
        r"vision_encoder.backbone.blocks.\1.mlp.#\2.\3",
    ),
    # FPN neck (same index order: convs[0] takes the deepest stage in both)
    (rf"image_encoder\.neck\.convs\.(\d+)\.conv\.{_P}", r"vision_encoder.neck.convs.\1.\2"),
    # prompt encoder
    (
        r"sam_prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix",
        "prompt_encoder.shared_embedding.positional_embedding",
    ),
    (r"sam_prompt_encoder\.point_embeddings\.(\d+)\.weight", r"prompt_encoder.point_embed.weight@\1"),
    (r"sam_prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight", r"prompt_encoder.\1.weight"),
    (rf"sam_prompt_encoder\.mask_downscaling\.0\.{_P}", r"prompt_encoder.mask_embed.conv1.\1"),
    (rf"sam_prompt_encoder\.mask_downscaling\.1\.{_P}", r"prompt_encoder.mask_embed.layer_norm1.\1"),
    (rf"sam_prompt_encoder\.mask_downscaling\.3\.{_P}", r"prompt_encoder.mask_embed.conv2.\1"),
    (rf"sam_prompt_encoder\.mask_downscaling\.4\.{_P}", r"prompt_encoder.mask_embed.layer_norm2.\1"),
    (rf"sam_prompt_encoder\.mask_downscaling\.6\.{_P}", r"prompt_encoder.mask_embed.conv3.\1"),
    # mask decoder
    (r"sam_mask_decoder\.(iou_token|mask_tokens|obj_score_token)\.weight", r"mask_decoder.\1.weight"),
    (rf"sam_mask_decoder\.(conv_s0|conv_s1)\.{_P}", r"mask_decoder.\1.\2"),
    (rf"sam_mask_decoder\.output_upscaling\.0\.{_P}", r"mask_decoder.upscale_conv1.\1"),
    (rf"sam_mask_decoder\.output_upscaling\.1\.{_P}", r"mask_decoder.upscale_layer_norm.\1"),
    (rf"sam_mask_decoder\.output_upscaling\.3\.{_P}", r"mask_decoder.upscale_conv2.\1"),
    (
        rf"sam_mask_decoder\.transformer\.{_ATTN}\.([qkv])_proj\.{_P}",
        r"mask_decoder.transformer.\1.\2_proj.\3",
    ),
    (rf"sam_mask_decoder\.transformer\.{_ATTN}\.out_proj\.{_P}", r"mask_decoder.transformer.\1.o_proj.\2"),
    (
        rf"sam_mask_decoder\.transformer\.layers\.(\d+)\.norm([1-4])\.{_P}",
        r"mask_decoder.transformer.layers.\1.layer_norm\2.\3",
    ),
    (
        rf"sam_mask_decoder\.transformer\.norm_final_attn\.{_P}",
        r"mask_decoder.transformer.layer_norm_final_attn.\1",
    ),
    (
        rf"sam_mask_decoder\.transformer\.layers\.(\d+)\.mlp\.layers\.(\d+)\.{_P}",
        r"mask_decoder.transformer.layers.\1.mlp.#\2.\3",
    ),
    (
        rf"sam_mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.layers\.(\d+)\.{_P}",
        r"mask_decoder.\1.#\2.\3",
    ),
    # added to the lowest-resolution feature map when there is no memory (image-only use)
    (r"no_mem_embed", "no_memory_embedding"),
)
_COMPILED = tuple((re.compile(pattern), target) for pattern, target in RULES)

# The original has one random-Fourier matrix; Sam2Model holds two untied copies of it.
_COPIES = {
    "prompt_encoder.shared_embedding.positional_embedding": "shared_image_embedding.positional_embedding"
}

# Real SAM2.1 Hiera hyper-parameters (sam2/configs/sam2.1/*.yaml; unset fields use Hiera defaults).
_HIERA: dict[str, dict[str, Any]] = {
    "tiny": dict(
        embed_dim=96, heads=1, stages=[1, 2, 7, 2], global_blocks=[5, 7, 9], bkg=[7, 7], windows=[8, 4, 14, 7]
    ),
    "small": dict(
        embed_dim=96,
        heads=1,
        stages=[1, 2, 11, 2],
        global_blocks=[7, 10, 13],
        bkg=[7, 7],
        windows=[8, 4, 14, 7],
    ),
    "base_plus": dict(
        embed_dim=112,
        heads=2,
        stages=[2, 3, 16, 3],
        global_blocks=[12, 16, 20],
        bkg=[14, 14],
        windows=[8, 4, 14, 7],
    ),
    "large": dict(
        embed_dim=144,
        heads=2,
        stages=[2, 6, 36, 4],
        global_blocks=[23, 33, 43],
        bkg=[7, 7],
        windows=[8, 4, 16, 8],
    ),
}


def unwrap_checkpoint(obj: Any) -> dict[str, Tensor]:
    """Return the bare state dict of a ``{"model": sd}`` / ``{"state_dict": sd}`` / plain checkpoint, minus ``module.``."""
    sd = obj
    for wrapper in ("model", "state_dict"):
        if isinstance(sd, Mapping) and isinstance(sd.get(wrapper), Mapping):
            sd = sd[wrapper]
            break
    if not isinstance(sd, Mapping):
        raise TypeError(f"expected a state dict mapping, got {type(sd).__name__}")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _is_dropped(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in DROPPED_PREFIXES)


def _rename(key: str) -> str:
    for pattern, target in _COMPILED:
        if m := pattern.fullmatch(key):
            return m.expand(target)
    raise ValueError(f"unknown SAM2 checkpoint key (no conversion rule, not a dropped video key): {key!r}")


def _resolve_mlp_layers(out: dict[str, Tensor]) -> dict[str, Tensor]:
    marked = [re.fullmatch(r"(.+)\.#(\d+)\.(weight|bias)", k) for k in out]
    depth: dict[str, int] = {}
    for m in filter(None, marked):
        depth[m[1]] = max(depth.get(m[1], 0), int(m[2]) + 1)
    result: dict[str, Tensor] = {}
    for key, m in zip(list(out), marked, strict=True):
        if m is None:
            result[key] = out[key]
            continue
        idx, last = int(m[2]), depth[m[1]] - 1
        layer = "proj_in" if idx == 0 else "proj_out" if idx == last else f"layers.{idx - 1}"
        result[f"{m[1]}.{layer}.{m[3]}"] = out[key]
    return result


def _stack_rows(out: dict[str, Tensor]) -> dict[str, Tensor]:
    rows: dict[str, dict[int, Tensor]] = {}
    result: dict[str, Tensor] = {}
    for key, value in out.items():
        m = re.fullmatch(r"(.+)@(\d+)", key)
        if m is None:
            result[key] = value
        else:
            rows.setdefault(m[1], {})[int(m[2])] = value
    for key, parts in rows.items():
        if sorted(parts) != list(range(len(parts))):
            raise ValueError(f"{key}: expected rows 0..{len(parts) - 1}, got {sorted(parts)}")
        result[key] = torch.cat([parts[i].reshape(1, -1) for i in range(len(parts))], dim=0)
    return result


def convert_sam2_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an original ``SAM2Base`` state dict to ``Sam2Model`` keys (no converter ships with transformers)."""
    out = {_rename(k): v for k, v in sd.items() if not _is_dropped(k)}
    out = _stack_rows(_resolve_mlp_layers(out))
    for src, dst in _COPIES.items():
        if src in out:
            out[dst] = out[src].clone()
    return out


def sam2_config_from_original(name: str, image_size: int = 1024) -> Sam2Config:
    """Build the ``Sam2Config`` of a SAM2.1 checkpoint (transformers has no converter to take it from)."""
    if name not in _HIERA:
        raise ValueError(f"unknown SAM2.1 variant {name!r}; expected one of {sorted(_HIERA)}")
    check_image_size(image_size)
    h = _HIERA[name]
    dims = [h["embed_dim"] * 2**i for i in range(4)]
    backbone = Sam2HieraDetConfig(
        hidden_size=h["embed_dim"],
        num_attention_heads=h["heads"],
        image_size=[image_size, image_size],
        blocks_per_stage=h["stages"],
        embed_dim_per_stage=dims,
        num_attention_heads_per_stage=[h["heads"] * 2**i for i in range(4)],
        window_size_per_stage=h["windows"],
        global_attention_blocks=h["global_blocks"],
        window_positional_embedding_background_size=h["bkg"],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=dims[::-1],
        backbone_feature_sizes=[[image_size // s, image_size // s] for s in (4, 8, 16)],
        fpn_hidden_size=256,
        fpn_top_down_levels=[2, 3],
        num_feature_levels=3,
    )
    return Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=256, image_size=image_size, patch_size=16),
        mask_decoder_config=Sam2MaskDecoderConfig(
            hidden_size=256, mlp_dim=2048, num_attention_heads=8, iou_head_depth=3, iou_head_hidden_dim=256
        ),
    )
