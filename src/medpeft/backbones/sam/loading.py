"""Load a SAM base model from a preset, a local directory, a ``.pth`` checkpoint or the hub."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from transformers import SamConfig, SamModel

from medpeft.backbones.hub import (
    from_hub,
    from_local_dir,
    read_torch_checkpoint,
    source_kind,
)
from medpeft.backbones.identity import BaseIdentity

from .bundled import BUNDLED_NAMES, load_bundled_state_dict
from .convert import (
    convert_segment_anything_state_dict,
    is_segment_anything_format,
    original_sam_config,
    unwrap_checkpoint,
)
from .presets import PRESET_NAMES, check_image_size, preset_config, with_image_size
from .resize import port_state_dict


def build_sam(config: SamConfig) -> SamModel:
    """A randomly initialised `SamModel` (torch's current RNG), in eval mode, initialised as the
    original segment-anything code trains from scratch.

    transformers' N(0, 0.02) init makes a fresh SAM's mask logits ~1e-5 with gradients to match, so a
    random-init preset barely trains; here every layer gets PyTorch's default init (as segment-anything
    uses), ``pos_embed``/``rel_pos`` start at zero, and the prompt positional-encoding matrix is drawn
    from N(0, 1) (transformers uses std = vision width / 2, which makes the encoding pure noise).
    """
    model = SamModel(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding, nn.LayerNorm)):
                module.reset_parameters()
        for name, param in model.named_parameters():
            if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
                param.zero_()
        model.shared_image_embedding.positional_embedding.normal_(0.0, 1.0)  # tied to the prompt encoder
    return model.eval()


def _from_state_dict(sd: Mapping[str, torch.Tensor], native: SamConfig, image_size: int) -> SamModel:
    """Build a model at ``image_size`` and load ``sd`` (native-size weights) into it strictly."""
    target = with_image_size(native, image_size)
    model = SamModel(target)
    model.load_state_dict(port_state_dict(sd, target), strict=True)
    return model.eval()


def _load_pth(path: Path, image_size: int) -> SamModel:
    sd = unwrap_checkpoint(read_torch_checkpoint(path))
    native = original_sam_config(sd)
    if is_segment_anything_format(sd):
        sd = convert_segment_anything_state_dict(sd)
    return _from_state_dict(sd, native, image_size)


def load_sam(source: str, image_size: int = 256) -> tuple[SamModel, BaseIdentity]:
    """Load a SAM base model at ``image_size`` and return ``(model, identity)``.

    ``source`` is a preset name (random init from torch's current RNG), a foundation bundled with the
    package (``sam-mini-med``), a ``save_pretrained``
    directory, a segment-anything/MedSAM ``.pth``/``.pt`` file, or a hub id ``owner/name``.
    Pretrained weights are ported from their native image size and loaded with ``strict=True``.
    The identity is a :class:`BaseIdentity`. The model is in eval mode.
    """
    check_image_size(image_size)
    kind = source_kind(source, PRESET_NAMES + BUNDLED_NAMES, "SAM", "facebook/sam-vit-base")
    if kind == "named" and source in PRESET_NAMES:
        kind, model = "preset", build_sam(preset_config(source, image_size))
    elif kind == "named":
        sd, info = load_bundled_state_dict(source)
        kind, model = (
            "bundled",
            _from_state_dict(sd, preset_config(info["preset"], info["image_size"]), image_size),
        )
    elif kind == "local":
        native = from_local_dir(SamModel.from_pretrained, Path(source).expanduser(), "SamModel")
        model = _from_state_dict(native.state_dict(), native.config, image_size)
    elif kind == "pth":
        model = _load_pth(Path(source).expanduser(), image_size)
    else:
        native = from_hub(SamModel.from_pretrained, source)
        model = _from_state_dict(native.state_dict(), native.config, image_size)
    identity = BaseIdentity.of(model, source, kind, image_size, "sam")
    return model, identity
