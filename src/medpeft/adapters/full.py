"""Full fine-tuning baseline: every tensor trains except frozen text encoders."""

from __future__ import annotations

from torch import nn

from medpeft.adapters.registry import MethodConfig, register_method


class FullConfig(MethodConfig):
    """Full fine-tuning has no options."""


@register_method("full", FullConfig)
def apply_full(model: nn.Module, cfg: FullConfig) -> nn.Module:
    """Unfreeze everything but modules flagged ``frozen_by_design`` (e.g. a CLIP text encoder)."""
    for module in model.modules():
        if getattr(module, "frozen_by_design", False):
            continue
        for p in module.parameters(recurse=False):
            p.requires_grad_(True)
    for module in model.modules():
        if getattr(module, "frozen_by_design", False):
            module.requires_grad_(False)
    return model
