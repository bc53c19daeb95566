"""Train the image encoder's attention weight matrices in place (biases frozen), as SRFT-GaLore does
with GaLore projecting their gradients."""

from __future__ import annotations

from typing import Literal

from torch import nn

from medpeft.adapters.registry import MethodConfig, register_method
from medpeft.adapters.targets import modules_matching

_TARGET = {"qkv": "qkv", "proj": "attn_out", "attn": "attn"}


class AttentionWeightsConfig(MethodConfig):
    """Which attention matrices train: the input projections (``qkv``), the output (``proj``) or both."""

    layers: Literal["qkv", "proj", "attn"] = "attn"


@register_method("attention_weights", AttentionWeightsConfig)
def apply_attention_weights(model: nn.Module, cfg: AttentionWeightsConfig) -> nn.Module:
    """Unfreeze the weights of the backbone's attention projections; their biases stay frozen."""
    for name in modules_matching(model, _TARGET[cfg.layers], "attention_weights", nn.Linear):
        model.get_submodule(name).weight.requires_grad_(True)
    return model
