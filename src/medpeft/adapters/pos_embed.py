"""Unfreeze the image encoder's absolute position embedding (the backbone's ``pos_embed`` target).

SAM's loader average-pools the 64x64 table to the input grid; SAM2 and DINOv2 interpolate theirs in
the forward pass; so this only trains it.
"""

from __future__ import annotations

from torch import nn

from medpeft.adapters.registry import MethodConfig, register_method
from medpeft.adapters.targets import parameters_matching


class PosEmbedConfig(MethodConfig):
    """No options."""


@register_method("pos_embed", PosEmbedConfig)
def apply_pos_embed(model: nn.Module, cfg: PosEmbedConfig) -> nn.Module:
    """Set ``requires_grad`` on the position-embedding parameters; error if the model has none."""
    params = [p for _, p in parameters_matching(model, "pos_embed", "pos_embed")]
    if not params:
        raise ValueError(
            "pos_embed: the model has no position embedding (a SAM vision encoder built with use_abs_pos=False?)"
        )
    for param in params:
        param.requires_grad_(True)
    return model
