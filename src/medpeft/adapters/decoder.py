"""Train SAM's mask decoder and/or prompt encoder (LoRA-SAM and MedSAM train both)."""

from __future__ import annotations

from torch import nn

from medpeft.adapters.registry import MethodConfig, register_method


class DecoderConfig(MethodConfig):
    """Which of SAM's light-weight parts to train."""

    mask_decoder: bool = True
    prompt_encoder: bool = True


def _unfreeze_module(model: nn.Module, suffix: str) -> int:
    count = 0
    for name, module in model.named_modules():
        if name == suffix or name.endswith("." + suffix):
            module.requires_grad_(True)
            count += 1
    if count == 0:
        raise ValueError(f"the model has no {suffix!r} module to train")
    return count


@register_method("decoder", DecoderConfig)
def apply_decoder(model: nn.Module, cfg: DecoderConfig) -> nn.Module:
    """Unfreeze the mask decoder and/or prompt encoder."""
    if cfg.mask_decoder:
        _unfreeze_module(model, "mask_decoder")
    if cfg.prompt_encoder:
        _unfreeze_module(model, "prompt_encoder")
    return model
