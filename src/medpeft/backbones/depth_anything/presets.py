"""Named Depth Anything presets (random init): DINOv2 encoder + DPT head made small.

- ``depth-anything-tiny``: width 32, 4 blocks, for tests (well under a second per step at 56x56).
- ``depth-anything-mini``: width 192, 6 blocks, 3 heads, trainable on a CPU at 252x252.
- ``depth-anything-v2-small|base|large``: the published architectures, random init (benchmarks).
Append ``-metric`` for a metric head (sigmoid x ``max_depth``, 10 m) instead of relative disparity.
The published models come from the hub (``depth-anything/Depth-Anything-V2-*-hf``) or original
``.pth`` files (:func:`medpeft.backbones.depth_anything.convert.depth_anything_config_from_original`).
"""

from __future__ import annotations

from typing import Any

from transformers import DepthAnythingConfig, Dinov2Config

from .convert import PATCH_SIZE

_ARCH: dict[str, dict[str, Any]] = {
    "depth-anything-tiny": {
        "width": 32,
        "layers": 4,
        "heads": 2,
        "out": [1, 2, 3, 4],
        "neck": [8, 16, 32, 32],
    },
    "depth-anything-mini": {
        "width": 192,
        "layers": 6,
        "heads": 3,
        "out": [2, 3, 5, 6],
        "neck": [24, 48, 96, 192],
    },
}
METRIC_MAX_DEPTH = 10
# the published Depth-Anything-V2 architectures, random init (benchmarks; weights from the hub or .pth)
PUBLISHED: dict[str, str] = {
    "depth-anything-v2-small": "vits",
    "depth-anything-v2-base": "vitb",
    "depth-anything-v2-large": "vitl",
}
PRESET_NAMES: tuple[str, ...] = tuple(n + s for n in (*_ARCH, *PUBLISHED) for s in ("", "-metric"))


def preset_config(name: str) -> DepthAnythingConfig:
    """The config of preset ``name`` (the input size is free: DINOv2 interpolates its position table)."""
    if name not in PRESET_NAMES:
        raise ValueError(f"unknown Depth Anything preset {name!r}; valid presets: {', '.join(PRESET_NAMES)}")
    metric = name.endswith("-metric")
    if name.removesuffix("-metric") in PUBLISHED:
        from .convert import depth_anything_config_from_original

        return depth_anything_config_from_original(PUBLISHED[name.removesuffix("-metric")], metric=metric)
    arch = _ARCH[name.removesuffix("-metric")]
    backbone = Dinov2Config(
        hidden_size=arch["width"],
        num_hidden_layers=arch["layers"],
        num_attention_heads=arch["heads"],
        mlp_ratio=4,
        image_size=518,
        patch_size=PATCH_SIZE,
        out_indices=arch["out"],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=PATCH_SIZE,
        reassemble_hidden_size=arch["width"],
        neck_hidden_sizes=arch["neck"],
        fusion_hidden_size=arch["neck"][0] * 2,
        head_hidden_size=max(8, arch["neck"][0]),
        depth_estimation_type="metric" if metric else "relative",
        max_depth=METRIC_MAX_DEPTH if metric else 1,
    )
