"""Load a SAM2 base model from a preset, a ``save_pretrained`` folder, an original ``.pt`` or the hub."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import Sam2Config, Sam2Model

from medpeft.backbones.hub import (
    from_hub,
    from_local_dir,
    read_torch_checkpoint,
    source_kind,
)
from medpeft.backbones.identity import BaseIdentity

from .presets import PRESET_NAMES, check_image_size, preset_config, with_image_size

HUB_IDS: tuple[str, ...] = tuple(
    f"facebook/sam2.1-hiera-{v}" for v in ("tiny", "small", "base-plus", "large")
)
_ORIGINAL_NAMES = ("tiny", "small", "base_plus", "large")


def build_sam2(config: Sam2Config) -> Sam2Model:
    """A randomly initialised `Sam2Model` (torch's current RNG) with PyTorch's default layer init
    (transformers' N(0, 0.02) leaves a fresh decoder's logits near zero, as for SAM)."""
    model = Sam2Model(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding, nn.LayerNorm)):
                module.reset_parameters()
        model.shared_image_embedding.positional_embedding.normal_(0.0, 1.0)
    return model.eval()


def _at_size(native: Sam2Model, image_size: int) -> Sam2Model:
    """The same weights at ``image_size``: Hiera interpolates its position embedding in the forward pass,
    so only the config changes."""
    model = Sam2Model(with_image_size(native.config, image_size))
    model.load_state_dict(native.state_dict(), strict=True)
    return model.eval()


def _original_name(path: Path, sd: dict[str, torch.Tensor]) -> str:
    """Which SAM2.1 size an original checkpoint is: from its file name, else from the Hiera width and depth."""
    stem = path.stem.replace("-", "_").replace("baseplus", "base_plus")
    for name in sorted(_ORIGINAL_NAMES, key=len, reverse=True):
        if name in stem:
            return name
    width = sd["image_encoder.trunk.patch_embed.proj.weight"].shape[0]
    blocks = len({k.split(".")[3] for k in sd if k.startswith("image_encoder.trunk.blocks.")})
    by_shape = {(96, 12): "tiny", (96, 16): "small", (112, 24): "base_plus", (144, 48): "large"}
    if (width, blocks) not in by_shape:
        raise ValueError(f"{path}: a Hiera of width {width} and {blocks} blocks is not a SAM2.1 size")
    return by_shape[(width, blocks)]


def _load_original(path: Path, image_size: int) -> Sam2Model:
    from .convert import convert_sam2_state_dict, sam2_config_from_original, unwrap_checkpoint

    sd = unwrap_checkpoint(read_torch_checkpoint(path))
    model = Sam2Model(sam2_config_from_original(_original_name(path, sd), image_size))
    model.load_state_dict(convert_sam2_state_dict(sd), strict=True)
    return model.eval()


def load_sam2(source: str, image_size: int = 256) -> tuple[Sam2Model, BaseIdentity]:
    """Load a SAM2 base at ``image_size`` and return ``(model, identity)`` (identity as :func:`load_sam`)."""
    check_image_size(image_size)
    kind = source_kind(source, PRESET_NAMES, "SAM2", HUB_IDS[0])
    path = Path(source).expanduser()
    if kind == "named":
        kind, model = "preset", build_sam2(preset_config(source, image_size))
    elif kind == "local":
        model = _at_size(from_local_dir(Sam2Model.from_pretrained, path, "Sam2Model"), image_size)
    elif kind == "pth":
        model = _load_original(path, image_size)
    else:
        model = _at_size(from_hub(Sam2Model.from_pretrained, source), image_size)
    identity = BaseIdentity.of(model, source, kind, image_size, "sam2")
    return model, identity
