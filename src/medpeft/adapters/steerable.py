"""Side-tuning an SO(3)-steerable patch embedding (the SegVol reproduction study's rotation-robust
adapter): the frozen ``Conv3d`` patch embedding (the backbone's ``patch_embed``) gets a trainable radial
(scalar-field steerable) embedding beside it, their outputs concatenated and mapped back to the model
width by a feed-forward adapter that starts as the identity. Pair it with LoRA on ``attn_out``, as the
study does: ``adapters: [{name: steerable}, {name: lora, targets: attn_out}]``.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from medpeft.adapters.registry import MethodConfig, register_method
from medpeft.adapters.targets import modules_matching, replace_module
from medpeft.models.steerable import SideTunedPatchEmbedding


class SteerableConfig(MethodConfig):
    """``channels``: width of the radial embedding (default: the model width); ``bases``: radial shells
    per kernel."""

    channels: int | None = Field(None, ge=1)
    bases: int = Field(4, ge=1)


@register_method("steerable", SteerableConfig)
def apply_steerable(model: nn.Module, cfg: SteerableConfig) -> nn.Module:
    """Wrap every ``patch_embed`` ``Conv3d`` in :class:`SideTunedPatchEmbedding` (its new parts train)."""
    for name in modules_matching(model, "patch_embed", "steerable", nn.Conv3d):
        frozen = model.get_submodule(name)
        side = SideTunedPatchEmbedding(frozen, cfg.channels or int(frozen.out_channels), cfg.bases)
        side.radial.requires_grad_(True)
        side.adapter.requires_grad_(True)
        replace_module(model, name, side)
    return model
