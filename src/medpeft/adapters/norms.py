"""Norm and bias tuning: unfreeze the LayerNorm affine parameters, or every bias (BitFit)."""

from __future__ import annotations

import re
from typing import Literal

from torch import nn

from medpeft.adapters.registry import MethodConfig, register_method

_SCOPES: dict[str, re.Pattern[str]] = {
    "encoder": re.compile(r"(^|\.)vision_encoder(\.|$)"),
    "decoder": re.compile(r"(^|\.)mask_decoder(\.|$)"),
    "all": re.compile(""),
}


class LayerNormConfig(MethodConfig):
    """``encoder``: the vision encoder's norms (blocks and neck); ``all``: every LayerNorm in the model."""

    scope: Literal["encoder", "all"] = "encoder"


class BiasConfig(MethodConfig):
    """``encoder``: vision encoder; ``decoder``: mask decoder; ``all``: every bias in the model."""

    scope: Literal["encoder", "decoder", "all"] = "all"


@register_method("layernorm", LayerNormConfig)
def apply_layernorm(model: nn.Module, cfg: LayerNormConfig) -> nn.Module:
    """Unfreeze weight and bias of every ``nn.LayerNorm`` (SAM's ``SamLayerNorm`` subclasses it) in scope."""
    scope, found = _SCOPES[cfg.scope], 0
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) and scope.search(name):
            for param in (module.weight, module.bias):
                if param is not None:
                    param.requires_grad_(True)
                    found += 1
    if not found:
        raise ValueError(f"layernorm: no affine LayerNorm in scope {cfg.scope!r}")
    return model


@register_method("bias", BiasConfig)
def apply_bias(model: nn.Module, cfg: BiasConfig) -> nn.Module:
    """BitFit: unfreeze every parameter named ``bias`` (linear, conv and norm biases) in scope."""
    scope, found = _SCOPES[cfg.scope], 0
    for name, param in model.named_parameters():
        if name.rpartition(".")[2] == "bias" and scope.search(name):
            param.requires_grad_(True)
            found += 1
    if not found:
        raise ValueError(f"bias: no bias parameter in scope {cfg.scope!r}")
    return model
