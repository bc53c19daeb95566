"""Unfreeze the image encoder's absolute position embedding.

The loader already average-pools SAM's 64x64 ``pos_embed`` to the input grid, so this only trains it.
"""

from __future__ import annotations

import re

from torch import nn

from medpeft.adapters.registry import MethodConfig, register_method

_POS_EMBED = re.compile(r"(^|\.)vision_encoder\.pos_embed$")


class PosEmbedConfig(MethodConfig):
    """No options."""


@register_method("pos_embed", PosEmbedConfig)
def apply_pos_embed(model: nn.Module, cfg: PosEmbedConfig) -> nn.Module:
    """Set ``requires_grad`` on ``vision_encoder.pos_embed``; error if the model has none."""
    params = [p for name, p in model.named_parameters() if _POS_EMBED.search(name)]
    if not params:
        raise ValueError(
            "pos_embed: the model has no vision_encoder.pos_embed (a SAM vision encoder built with use_abs_pos=False?)"
        )
    for param in params:
        param.requires_grad_(True)
    return model
