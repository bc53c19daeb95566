"""Gradient checkpointing of the image encoder's blocks, for every backbone through its ``blocks`` target:
each block's activations are dropped after the forward pass and recomputed in the backward pass.

Written here rather than with transformers' ``gradient_checkpointing_enable`` because SegVol's MONAI ViT
has none and one mechanism keeps every backbone alike (PyTorch's non-reentrant ``checkpoint``).
"""

from __future__ import annotations

import functools
import re

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def encoder_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The encoder's repeated blocks, by the backbone's ``blocks`` pattern (its index group ends the name)."""
    pattern = getattr(model, "target_table", {}).get("blocks")
    if pattern is None:
        raise ValueError(
            f"{type(model).__name__} names no encoder blocks; gradient checkpointing and FSDP need them"
        )
    block = re.compile(r"(^|.*\.)" + pattern.split(r"(\d+)")[0] + r"\d+$")
    return [(name, m) for name, m in model.named_modules() if block.fullmatch(name)]


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Checkpoint every encoder block while gradients are recorded; returns how many blocks."""
    blocks = encoder_blocks(model)
    for _, module in blocks:
        if getattr(module, "_medpeft_checkpointed", False):
            continue
        forward = module.forward

        @functools.wraps(forward)
        def checkpointed(*args, _forward=forward, _module=module, **kwargs):
            if _module.training and torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        module.forward = checkpointed
        module._medpeft_checkpointed = True
    return len(blocks)
