"""Original segment-anything (and MedSAM) checkpoints -> `transformers.SamModel` keys and config.

The original checkpoints are plain state dicts of ``segment_anything.modeling.Sam`` (keys under
``image_encoder.``, ``prompt_encoder.``, ``mask_decoder.``, plus the ``pixel_mean``/``pixel_std``
buffers), sometimes wrapped as ``{"model": sd}`` / ``{"state_dict": sd}`` or saved from
``DataParallel`` with a ``module.`` prefix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from transformers import SamConfig

from .presets import PRESETS, preset_config

TIED_KEYS = (
    "shared_image_embedding.positional_embedding",
    "prompt_encoder.shared_embedding.positional_embedding",
)
_DROPPED = {"pixel_mean", "pixel_std"}
_MASK_DOWNSCALING = {"0": "conv1", "1": "layer_norm1", "3": "conv2", "4": "layer_norm2", "6": "conv3"}
_NECK = {"0": "conv1", "1": "layer_norm1", "2": "conv2", "3": "layer_norm2"}
_UPSCALING = {"0": "upscale_conv1", "1": "upscale_layer_norm", "3": "upscale_conv2"}
_WB = r"(weight|bias)"
_ATTN = r"([qkv]_proj|out_proj)"
_DECODER_ATTN = r"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
_MLP_HEAD = r"mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.(\d+)\." + _WB

Rule = tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]


def _rules() -> list[Rule]:
    table: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [
        (r"image_encoder\.pos_embed", "vision_encoder.pos_embed"),
        (rf"image_encoder\.patch_embed\.proj\.{_WB}", r"vision_encoder.patch_embed.projection.\1"),
        (rf"image_encoder\.blocks\.(\d+)\.norm([12])\.{_WB}", r"vision_encoder.layers.\1.layer_norm\2.\3"),
        (rf"image_encoder\.blocks\.(\d+)\.attn\.(qkv|proj)\.{_WB}", r"vision_encoder.layers.\1.attn.\2.\3"),
        (r"image_encoder\.blocks\.(\d+)\.attn\.(rel_pos_[hw])", r"vision_encoder.layers.\1.attn.\2"),
        (rf"image_encoder\.blocks\.(\d+)\.mlp\.(lin[12])\.{_WB}", r"vision_encoder.layers.\1.mlp.\2.\3"),
        (rf"image_encoder\.neck\.([0-3])\.{_WB}", lambda m: f"vision_encoder.neck.{_NECK[m[1]]}.{m[2]}"),
        (r"prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix", TIED_KEYS[1]),
        (r"prompt_encoder\.point_embeddings\.(\d+)\.weight", r"prompt_encoder.point_embed.\1.weight"),
        (r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight", r"prompt_encoder.\1.weight"),
        (
            rf"prompt_encoder\.mask_downscaling\.([01346])\.{_WB}",
            lambda m: f"prompt_encoder.mask_embed.{_MASK_DOWNSCALING[m[1]]}.{m[2]}",
        ),
        (r"mask_decoder\.(iou_token|mask_tokens)\.weight", r"mask_decoder.\1.weight"),
        (
            rf"mask_decoder\.transformer\.layers\.(\d+)\.{_DECODER_ATTN}\.{_ATTN}\.{_WB}",
            r"mask_decoder.transformer.layers.\1.\2.\3.\4",
        ),
        (
            rf"mask_decoder\.transformer\.layers\.(\d+)\.norm([1-4])\.{_WB}",
            r"mask_decoder.transformer.layers.\1.layer_norm\2.\3",
        ),
        (
            rf"mask_decoder\.transformer\.layers\.(\d+)\.mlp\.(lin[12])\.{_WB}",
            r"mask_decoder.transformer.layers.\1.mlp.\2.\3",
        ),
        (
            rf"mask_decoder\.transformer\.final_attn_token_to_image\.{_ATTN}\.{_WB}",
            r"mask_decoder.transformer.final_attn_token_to_image.\1.\2",
        ),
        (
            rf"mask_decoder\.transformer\.norm_final_attn\.{_WB}",
            r"mask_decoder.transformer.layer_norm_final_attn.\1",
        ),
        (
            rf"mask_decoder\.output_upscaling\.([013])\.{_WB}",
            lambda m: f"mask_decoder.{_UPSCALING[m[1]]}.{m[2]}",
        ),
    ]
    return [(re.compile(pattern), target) for pattern, target in table]


_RULES = _rules()


def unwrap_checkpoint(obj: Any) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: unwraps ``{"model"|"state_dict": sd}``, strips ``module.``."""
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("checkpoint is not a state dict of tensors (nor {'model'|'state_dict': state dict})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def is_segment_anything_format(sd: Mapping[str, Any]) -> bool:
    """Whether ``sd`` uses the original segment-anything key names."""
    return any(k.removeprefix("module.").startswith("image_encoder.") for k in sd)


def rename_key(key: str, depths: dict[str, int]) -> str | None:
    """The `SamModel` name of one original segment-anything key (None: not a SAM key). SegVol's mask
    decoder uses the same names, so its converter maps them here too; ``depths``: :func:`mlp_depths`."""
    if m := re.fullmatch(_MLP_HEAD, key):
        return _mlp_key(m, depths)
    for pattern, target in _RULES:
        if m := pattern.fullmatch(key):
            return m.expand(target) if isinstance(target, str) else target(m)
    return None


def mlp_depths(keys: list[str]) -> dict[str, int]:
    """Layers per original ``MLP`` head (hypernetworks, IoU head), to name its first and last layer."""
    depths: dict[str, int] = {}
    for key in keys:
        if m := re.fullmatch(_MLP_HEAD, key):
            depths[m[1]] = max(depths.get(m[1], 0), int(m[2]) + 1)
    return depths


def _mlp_key(m: re.Match[str], depths: dict[str, int]) -> str:
    """Original ``MLP.layers.j`` -> SamFeedForward ``proj_in`` / ``layers.(j-1)`` / ``proj_out``."""
    j, last = int(m[2]), depths[m[1]] - 1
    name = "proj_in" if j == 0 else "proj_out" if j == last else f"layers.{j - 1}"
    return f"mask_decoder.{m[1]}.{name}.{m[3]}"


def convert_segment_anything_state_dict(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Map an original segment-anything / MedSAM state dict onto `SamModel` keys.

    Also fills both tied positional-encoding keys from the original gaussian matrix. Unknown keys
    raise ValueError instead of being dropped silently.
    """
    sd = unwrap_checkpoint(sd)
    depths = mlp_depths(list(sd))
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if key in _DROPPED:
            continue
        if (renamed := rename_key(key, depths)) is None:
            unknown.append(key)
        else:
            out[renamed] = value
    if unknown:
        raise ValueError(f"unrecognised segment-anything keys ({len(unknown)}): {', '.join(unknown[:5])}")
    if TIED_KEYS[1] in out:
        out[TIED_KEYS[0]] = out[TIED_KEYS[1]]
    return out


def _count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m[1] for k in sd if (m := pattern.match(k))})


def _heads_from_width(width: int, preset: str | None) -> int:
    """Encoder heads by width (768->12, 1024->16, 1280->16, and the small presets)."""
    if preset is not None:
        return PRESETS[preset]["vision"]["num_attention_heads"]
    for spec in PRESETS.values():
        if spec["vision"]["hidden_size"] == width:
            return spec["vision"]["num_attention_heads"]
    raise ValueError(
        f"cannot infer the attention heads of a width-{width} image encoder; "
        f"pass preset= (one of {', '.join(PRESETS)})"
    )


def _vision_kwargs(sd: Mapping[str, torch.Tensor], preset: str | None) -> dict[str, Any]:
    """Vision-config fields read off tensor shapes."""
    proj = sd["vision_encoder.patch_embed.projection.weight"]
    width, channels, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    depth = _count(sd, "vision_encoder.layers.")
    pos = sd.get("vision_encoder.pos_embed")
    kw: dict[str, Any] = {
        "hidden_size": width,
        "num_hidden_layers": depth,
        "num_channels": channels,
        "patch_size": patch,
        "mlp_dim": sd["vision_encoder.layers.0.mlp.lin1.weight"].shape[0],
        "qkv_bias": "vision_encoder.layers.0.attn.qkv.bias" in sd,
        "use_abs_pos": pos is not None,
        "output_channels": sd["vision_encoder.neck.conv1.weight"].shape[0],
        "num_pos_feats": sd[TIED_KEYS[1]].shape[1],
    }
    rel = [sd.get(f"vision_encoder.layers.{i}.attn.rel_pos_h") for i in range(depth)]
    kw["use_rel_pos"] = rel[0] is not None
    preset_vision = PRESETS[preset]["vision"] if preset else {}
    if pos is None and not kw["use_rel_pos"]:
        raise ValueError("checkpoint has neither pos_embed nor rel_pos; its image size cannot be inferred")
    grid = pos.shape[1] if pos is not None else None
    if kw["use_rel_pos"]:
        kw["num_attention_heads"] = width // rel[0].shape[1]
        lengths = [r.shape[0] for r in rel]
        grid = grid or (max(lengths) + 1) // 2
        windowed = sorted({n for n in lengths if n != 2 * grid - 1})
        if len(windowed) > 1:
            raise ValueError(f"inconsistent windowed rel_pos lengths {windowed}")
        if windowed:
            kw["window_size"] = (windowed[0] + 1) // 2
            kw["global_attn_indexes"] = [i for i, n in enumerate(lengths) if n == 2 * grid - 1]
        elif "global_attn_indexes" in preset_vision:  # window == grid: ambiguous, trust the preset
            kw["window_size"] = preset_vision["window_size"]
            kw["global_attn_indexes"] = list(preset_vision["global_attn_indexes"])
        else:
            kw["window_size"], kw["global_attn_indexes"] = 0, list(range(depth))
    else:
        kw["num_attention_heads"] = _heads_from_width(width, preset)
        for name in ("window_size", "global_attn_indexes"):
            kw[name] = preset_vision.get(name, 14 if name == "window_size" else [])
    kw["image_size"] = grid * patch
    return kw


def _decoder_heads(hidden: int, internal: int, preset: str | None) -> int:
    if preset is not None:
        return PRESETS[preset]["decoder"]["num_attention_heads"]
    for spec in PRESETS.values():
        if spec["decoder"]["hidden_size"] == hidden:
            return spec["decoder"]["num_attention_heads"]
    if internal % 8 == 0:
        return 8  # every published SAM / MedSAM decoder
    raise ValueError(f"cannot infer the mask-decoder heads for width {hidden}; pass preset=")


def config_from_state_dict(sd: Mapping[str, torch.Tensor], preset: str | None = None) -> SamConfig:
    """Infer the native `SamConfig` of a state dict with `SamModel` keys from its tensor shapes.

    Attention-head counts come from the rel_pos head dim (encoder) and from ``preset`` or the preset
    table (decoder; 8 as in SAM otherwise). ``preset`` also settles what shapes cannot tell.
    """
    if preset is not None:
        preset_config(preset)  # validates the name
    vision = _vision_kwargs(sd, preset)
    image = {"image_size": vision["image_size"], "patch_size": vision["patch_size"]}
    hidden = sd["mask_decoder.iou_token.weight"].shape[1]
    internal = sd["mask_decoder.transformer.final_attn_token_to_image.q_proj.weight"].shape[0]
    prompt = {
        "hidden_size": sd["prompt_encoder.no_mask_embed.weight"].shape[1],
        "mask_input_channels": sd["prompt_encoder.mask_embed.conv2.weight"].shape[0],
        "num_point_embeddings": _count(sd, "prompt_encoder.point_embed."),
        **image,
    }
    decoder = {
        "hidden_size": hidden,
        "num_hidden_layers": _count(sd, "mask_decoder.transformer.layers."),
        "num_attention_heads": _decoder_heads(hidden, internal, preset),
        "mlp_dim": sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
        "attention_downsample_rate": hidden // internal,
        "num_multimask_outputs": sd["mask_decoder.mask_tokens.weight"].shape[0] - 1,
        "iou_head_depth": _count(sd, "mask_decoder.iou_prediction_head.layers.") + 2,
        "iou_head_hidden_dim": sd["mask_decoder.iou_prediction_head.proj_in.weight"].shape[0],
    }
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def original_sam_config(sd: Mapping[str, Any], preset: str | None = None) -> SamConfig:
    """Native `SamConfig` of an original-format (or already converted) SAM / MedSAM state dict.

    Depth from the block count, width and image size from shapes, heads from the rel_pos head dim
    (falling back to the preset table: 768->12, 1024->16, 1280->16), global-attention indexes from
    the blocks whose rel_pos spans the whole grid (2*grid-1) rather than a window. For original-format
    input the decoder's two-way-block LayerNorm eps is set to torch's 1e-5, as in segment-anything.
    """
    sd = unwrap_checkpoint(sd)
    original = is_segment_anything_format(sd)
    config = config_from_state_dict(convert_segment_anything_state_dict(sd) if original else sd, preset)
    if original:
        config.mask_decoder_config.layer_norm_eps = 1e-5
    return config
