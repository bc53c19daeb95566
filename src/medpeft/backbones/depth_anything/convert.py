"""Original Depth-Anything-V2 checkpoints -> ``transformers.DepthAnythingForDepthEstimation``.

transformers ships no converter for the original DA-V2 ``.pth`` files (``depth_anything_v2_{vits,vitb,vitl}.pth``
and ``depth_anything_v2_metric_{hypersim,vkitti}_{vits,vitb,vitl}.pth``), hence this hand-written key table.
Names follow the transformers 5.x layout (``attention.{q,k,v,o}_proj``, not 4.x's ``attention.attention.query``).
Metric checkpoints: ``max_depth`` 20 for ``hypersim`` (the default), 80 for ``vkitti`` (see ``METRIC_MAX_DEPTH``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from transformers import DepthAnythingConfig, Dinov2Config

from medpeft.backbones.hub import check_multiple

PATCH_SIZE = 14
IMAGE_SIZE = 518
METRIC_MAX_DEPTH = {"hypersim": 20, "vkitti": 80}  # indoor / outdoor metric checkpoints, in metres


class _Encoder(NamedTuple):
    hidden: int  # DINOv2 embed dim
    layers: int
    heads: int
    blocks: list[int]  # 0-based blocks whose outputs the DPT head reads (intermediate_layer_idx)
    out: list[int]  # DPT head out_channels
    features: int  # DPT head features


_ENCODERS = {
    "vits": _Encoder(384, 12, 6, [2, 5, 8, 11], [48, 96, 192, 384], 64),
    "vitb": _Encoder(768, 12, 12, [2, 5, 8, 11], [96, 192, 384, 768], 128),
    "vitl": _Encoder(1024, 24, 16, [4, 11, 17, 23], [256, 512, 1024, 1024], 256),
}

Tensor = torch.Tensor
Target = str | Callable[[re.Match[str], Tensor, DepthAnythingConfig], dict[str, Tensor]]


def unwrap_checkpoint(obj: Any) -> dict[str, Tensor]:
    """Original checkpoints come bare or wrapped by training scripts; return the plain state dict."""
    while isinstance(obj, Mapping) and any(isinstance(obj.get(k), Mapping) for k in ("model", "state_dict")):
        obj = obj["model"] if isinstance(obj.get("model"), Mapping) else obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"expected a state dict (or {{'model': sd}} / {{'state_dict': sd}}), got {type(obj).__name__}"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def check_size(image_size: int, patch: int = PATCH_SIZE) -> int:
    """DINOv2 cuts the image into whole patches, so the input side must be a multiple of the patch size."""
    return check_multiple(image_size, patch, "Depth Anything (DINOv2 patches of 14)")


def depth_anything_config_from_original(
    encoder: str, metric: bool = False, max_depth: float | None = None
) -> DepthAnythingConfig:
    """The original repo hard-codes its hyper-parameters in run.py / dpt.py; rebuild them as a transformers config."""
    if encoder not in _ENCODERS:
        raise ValueError(f"unknown Depth-Anything-V2 encoder {encoder!r}; valid: {', '.join(_ENCODERS)}")
    if max_depth is not None and not metric:
        raise ValueError("max_depth only applies to metric checkpoints (pass metric=True)")
    e = _ENCODERS[encoder]
    depth = 1 if not metric else METRIC_MAX_DEPTH["hypersim"] if max_depth is None else max_depth
    if float(depth) != int(depth):  # transformers 5.x types DepthAnythingConfig.max_depth as int
        raise ValueError(f"max_depth must be a whole number of metres for DepthAnythingConfig, got {depth}")
    backbone = Dinov2Config(
        hidden_size=e.hidden,
        num_hidden_layers=e.layers,
        num_attention_heads=e.heads,
        mlp_ratio=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        out_indices=[b + 1 for b in e.blocks],  # stage 0 is the embedding output, stage k is block k-1
        apply_layernorm=True,  # the original normalises every intermediate output with the final norm
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=PATCH_SIZE,
        reassemble_hidden_size=e.hidden,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=e.out,
        fusion_hidden_size=e.features,
        head_hidden_size=32,
        depth_estimation_type="metric" if metric else "relative",
        max_depth=int(depth),
    )


def _split_qkv(m: re.Match[str], t: Tensor, config: DepthAnythingConfig) -> dict[str, Tensor]:
    """The original fuses q, k, v row-wise in one Linear (rows [q; k; v]); transformers keeps three."""
    hidden = config.backbone_config.hidden_size
    if t.shape[0] != 3 * hidden:
        raise ValueError(f"{m[0]}: expected {3 * hidden} rows (3 x hidden {hidden}), got {tuple(t.shape)}")
    return {
        f"backbone.encoder.layer.{m[1]}.attention.{n}_proj.{m[2]}": p
        for n, p in zip("qkv", t.split(hidden), strict=True)
    }


def _mask_token(m: re.Match[str], t: Tensor, config: DepthAnythingConfig) -> dict[str, Tensor]:
    """Unused for depth; kept only where the target backbone was built with a mask token."""
    keep = getattr(config.backbone_config, "use_mask_token", True)
    return {"backbone.embeddings.mask_token": t} if keep else {}


def _fusion(template: str) -> Callable[[re.Match[str], Tensor, DepthAnythingConfig], dict[str, Tensor]]:
    """refinenetN runs deepest-first: refinenet4 is fusion_stage.layers.0, ..., refinenet1 is layers.3."""

    def rename(m: re.Match[str], t: Tensor, config: DepthAnythingConfig) -> dict[str, Tensor]:
        layer = len(config.neck_hidden_sizes) - int(m[1])
        return {template.format(*m.groups()[1:], layer=layer): t}

    return rename


_L = "backbone.encoder.layer"
_F = "neck.fusion_stage.layers.{layer}"
# Ordered (original-key regex, target); a str target is a re.Match.expand template. Every key must match one.
RULES: list[tuple[str, Target]] = [
    (r"pretrained\.cls_token", "backbone.embeddings.cls_token"),
    (r"pretrained\.mask_token", _mask_token),
    (r"pretrained\.pos_embed", "backbone.embeddings.position_embeddings"),
    (r"pretrained\.patch_embed\.proj\.(weight|bias)", r"backbone.embeddings.patch_embeddings.projection.\1"),
    (r"pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", _split_qkv),
    (r"pretrained\.blocks\.(\d+)\.attn\.proj\.(weight|bias)", _L + r".\1.attention.o_proj.\2"),
    (r"pretrained\.blocks\.(\d+)\.ls([12])\.gamma", _L + r".\1.layer_scale\2.lambda1"),
    (r"pretrained\.blocks\.(\d+)\.(norm[12]|mlp\.fc[12])\.(weight|bias)", _L + r".\1.\2.\3"),
    (r"pretrained\.norm\.(weight|bias)", r"backbone.layernorm.\1"),
    (r"depth_head\.projects\.(\d)\.(weight|bias)", r"neck.reassemble_stage.layers.\1.projection.\2"),
    (r"depth_head\.resize_layers\.([013])\.(weight|bias)", r"neck.reassemble_stage.layers.\1.resize.\2"),
    (
        r"depth_head\.scratch\.layer([1-4])_rn\.weight",
        lambda m, t, c: {f"neck.convs.{int(m[1]) - 1}.weight": t},
    ),
    (r"depth_head\.scratch\.refinenet([1-4])\.out_conv\.(weight|bias)", _fusion(_F + ".projection.{}")),
    (
        r"depth_head\.scratch\.refinenet([1-4])\.resConfUnit([12])\.conv([12])\.(weight|bias)",
        _fusion(_F + ".residual_layer{}.convolution{}.{}"),
    ),
    (r"depth_head\.scratch\.output_conv1\.(weight|bias)", r"head.conv1.\1"),
    (r"depth_head\.scratch\.output_conv2\.0\.(weight|bias)", r"head.conv2.\1"),
    (r"depth_head\.scratch\.output_conv2\.2\.(weight|bias)", r"head.conv3.\1"),
]
_COMPILED = [(re.compile(pattern), target) for pattern, target in RULES]


def convert_depth_anything_state_dict(
    sd: Mapping[str, Tensor], config: DepthAnythingConfig
) -> dict[str, Tensor]:
    """Rename (and split qkv) an original DA-V2 state dict so it loads strictly into the transformers model."""
    out: dict[str, Tensor] = {}
    for key, tensor in unwrap_checkpoint(sd).items():
        for pattern, target in _COMPILED:
            if m := pattern.fullmatch(key):
                out.update(
                    {m.expand(target): tensor} if isinstance(target, str) else target(m, tensor, config)
                )
                break
        else:
            raise ValueError(f"unknown Depth-Anything-V2 checkpoint key: {key!r}")
    return out
