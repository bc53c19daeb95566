"""Train the backbone's decoder and/or prompt encoder (LoRA-SAM and MedSAM train both): SAM's and
SAM2's mask decoder, Depth Anything's DPT neck and head."""

from __future__ import annotations

from torch import nn

from medpeft.adapters.registry import MethodConfig, register_method
from medpeft.adapters.targets import has_target, modules_matching


class DecoderConfig(MethodConfig):
    """Which light-weight parts to train; ``prompt_encoder`` None: it trains where the backbone has one."""

    mask_decoder: bool = True
    prompt_encoder: bool | None = None


@register_method("decoder", DecoderConfig)
def apply_decoder(model: nn.Module, cfg: DecoderConfig) -> nn.Module:
    """Unfreeze the decoder and/or prompt encoder modules the backbone's table names."""
    parts = ["decoder"] if cfg.mask_decoder else []
    if cfg.prompt_encoder or (cfg.prompt_encoder is None and has_target(model, "prompt_encoder")):
        parts.append("prompt_encoder")
    for part in parts:
        for name in modules_matching(model, part, "decoder"):
            model.get_submodule(name).requires_grad_(True)
    return model
