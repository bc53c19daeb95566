"""Train the image encoder's attention weight matrices in place (biases frozen), as SRFT-GaLore does
with GaLore projecting their gradients."""

from __future__ import annotations

import re
from typing import Literal

from torch import nn

from medpeft.adapters.registry import MethodConfig, register_method

_LAYERS = {"qkv": "qkv", "proj": "proj", "attn": "(qkv|proj)"}


class AttentionWeightsConfig(MethodConfig):
    """Which attention matrices train: ``qkv``, ``proj`` or both (``attn``)."""

    layers: Literal["qkv", "proj", "attn"] = "attn"


@register_method("attention_weights", AttentionWeightsConfig)
def apply_attention_weights(model: nn.Module, cfg: AttentionWeightsConfig) -> nn.Module:
    """Unfreeze ``vision_encoder.layers.N.attn.{qkv,proj}.weight``; their biases stay frozen."""
    pattern = re.compile(rf"(^|\.)vision_encoder\.layers\.\d+\.attn\.{_LAYERS[cfg.layers]}\.weight$")
    hits = [p for n, p in model.named_parameters() if pattern.search(n)]
    if not hits:
        raise ValueError(
            f"attention_weights: the model has no vision_encoder.layers.N.attn.{cfg.layers} weight to train"
        )
    for p in hits:
        p.requires_grad_(True)
    return model
