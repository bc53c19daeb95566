"""Load a Depth Anything base from a preset, a ``save_pretrained`` folder, an original ``.pth`` or the hub."""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn
from transformers import DepthAnythingForDepthEstimation

from medpeft.backbones.hub import (
    from_hub,
    from_local_dir,
    read_torch_checkpoint,
    source_kind,
)
from medpeft.backbones.identity import BaseIdentity

from .convert import (
    METRIC_MAX_DEPTH,
    check_size,
    convert_depth_anything_state_dict,
    depth_anything_config_from_original,
    unwrap_checkpoint,
)
from .presets import PRESET_NAMES, preset_config

HUB_IDS: tuple[str, ...] = tuple(
    f"depth-anything/Depth-Anything-V2-{k}{s}-hf"
    for k in ("", "Metric-Indoor-", "Metric-Outdoor-")
    for s in ("Small", "Base", "Large")
)
_FILE = re.compile(r"depth_anything_v2_(?:metric_(hypersim|vkitti)_)?(vits|vitb|vitl)")


def trainable_init(model: nn.Module) -> nn.Module:
    """Re-draw a random-init preset's convolutions with PyTorch's defaults: transformers' initializer
    (std 0.02) shrinks the DPT neck's output by ~1e-4 per stage, so a preset starts as a constant and
    barely learns from scratch (self-supervised depth never leaves it)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            module.reset_parameters()
    if model.config.depth_estimation_type == "relative":  # the ReLU head starts alive, not at 0
        nn.init.constant_(model.head.conv3.bias, 1.0)
    return model


def _load_original(path: Path) -> DepthAnythingForDepthEstimation:
    """An original ``depth_anything_v2[_metric_{hypersim,vkitti}]_{vits,vitb,vitl}.pth``: its name says the
    encoder and, for metric ones, the scene (and so the maximum depth)."""
    m = _FILE.search(path.name)
    if m is None:
        raise ValueError(
            f"{path}: cannot tell the Depth-Anything-V2 variant; keep the original file name "
            "(depth_anything_v2_vits.pth, depth_anything_v2_metric_hypersim_vitb.pth, ...)"
        )
    scene, encoder = m.group(1), m.group(2)
    config = depth_anything_config_from_original(
        encoder, metric=scene is not None, max_depth=METRIC_MAX_DEPTH[scene] if scene else None
    )
    model = DepthAnythingForDepthEstimation(config)
    model.load_state_dict(
        convert_depth_anything_state_dict(unwrap_checkpoint(read_torch_checkpoint(path)), config)
    )
    return model.eval()


def load_depth_anything(
    source: str, image_size: int = 518
) -> tuple[DepthAnythingForDepthEstimation, BaseIdentity]:
    """Load a Depth Anything base and return ``(model, identity)`` (identity as :func:`load_sam`).

    The weights do not depend on the input size (DINOv2 interpolates its position table); ``image_size``
    is checked against the patch size and recorded.
    """
    check_size(image_size)
    kind = source_kind(source, PRESET_NAMES, "Depth Anything", HUB_IDS[0])
    path = Path(source).expanduser()
    if kind == "named":
        kind, model = "preset", trainable_init(DepthAnythingForDepthEstimation(preset_config(source)).eval())
    elif kind == "local":
        model = from_local_dir(
            DepthAnythingForDepthEstimation.from_pretrained, path, "DepthAnythingForDepthEstimation"
        )
    elif kind == "pth":
        model = _load_original(path)
    else:
        model = from_hub(DepthAnythingForDepthEstimation.from_pretrained, source)
    identity = BaseIdentity.of(model, source, kind, image_size, "depth_anything")
    return model.eval(), identity
