"""LoRA (via peft) and DARES's Vector-LoRA (rank shrinking with depth, via peft's rank_pattern)."""

from __future__ import annotations

import math
import re
from typing import Literal

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from pydantic import Field, model_validator
from torch import nn

from medpeft.adapters.qv_lora import QVLoraLinear, apply_qv_lora
from medpeft.adapters.registry import MethodConfig, register_method
from medpeft.adapters.targets import block_index, has_target, modules_matching, num_blocks, replace_module


class LoraMethodConfig(MethodConfig):
    """LoRA on the frozen image encoder.

    ``targets``: a symbolic name the backbone maps (qkv, attn, mlp, all, ...) or a regex fully matching
    module names. ``qv``: adapt only query and value, as SAMed does: slices of a fused qkv projection
    (SAM, SAM2) or the separate q and v projections (Depth Anything's DINOv2).
    """

    r: int = Field(4, ge=1)
    alpha: float | None = None  # default: alpha = r (scale 1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: str = "qkv"
    qv: bool = False


class VectorLoraConfig(MethodConfig):
    """Vector-LoRA (DARES): one rank per transformer block, shrinking with depth.

    Either ``ranks`` lists one rank per block, or ``schedule`` interpolates from ``r_max`` at the first
    block to ``r_min`` at the last (``linear`` or ``geometric``), or steps down by 2 every two blocks
    from ``r_max`` to ``r_min`` (``dares``: 14,14,12,12,10,10,8,8,8,8,8,8 over ViT-S's 12 blocks). ``alpha_ratio`` sets alpha_i = ratio * r_i.
    """

    ranks: list[int] | None = None
    schedule: Literal["linear", "geometric", "dares"] = "linear"
    r_max: int = Field(14, ge=1)
    r_min: int = Field(8, ge=1)
    alpha_ratio: float = Field(1.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: str = "qkv"

    @model_validator(mode="after")
    def _check(self) -> VectorLoraConfig:
        if self.ranks is not None and any(r < 1 for r in self.ranks):
            raise ValueError(f"vector_lora.ranks must be positive integers, got {self.ranks}")
        if self.r_min > self.r_max:
            raise ValueError(f"vector_lora.r_min ({self.r_min}) must not exceed r_max ({self.r_max})")
        return self


def _linear_names(model: nn.Module, targets: str, method: str) -> list[str]:
    return modules_matching(model, targets, method, nn.Linear)


def _inject(model: nn.Module, config: LoraConfig) -> nn.Module:
    """peft freezes every non-LoRA tensor on injection; restore what earlier methods unfroze."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    inject_adapter_in_model(config, model)
    for n, p in model.named_parameters():
        if n in trainable:
            p.requires_grad_(True)
    return model


@register_method("lora", LoraMethodConfig, merge=lambda m: merge_lora(m))
def apply_lora(model: nn.Module, cfg: LoraMethodConfig) -> nn.Module:
    """Inject LoRA adapters into the targeted layers."""
    alpha = cfg.alpha if cfg.alpha is not None else cfg.r
    if cfg.qv and has_target(model, "q") and cfg.targets == "qkv":  # separate q and v projections
        names = _linear_names(model, "q", "lora") + _linear_names(model, "v", "lora")
    else:
        names = _linear_names(model, cfg.targets, "lora")
        if cfg.qv:
            return apply_qv_lora(model, names, cfg.r, alpha, cfg.dropout)
    config = LoraConfig(r=cfg.r, lora_alpha=alpha, lora_dropout=cfg.dropout, target_modules=names)
    return _inject(model, config)


def vector_ranks(num_blocks: int, cfg: VectorLoraConfig) -> list[int]:
    """Per-block ranks for Vector-LoRA."""
    if cfg.ranks is not None:
        if len(cfg.ranks) != num_blocks:
            raise ValueError(
                f"vector_lora.ranks has {len(cfg.ranks)} entries but the encoder has {num_blocks} blocks"
            )
        return list(cfg.ranks)
    if cfg.schedule == "dares":
        return [max(cfg.r_min, cfg.r_max - 2 * (i // 2)) for i in range(num_blocks)]
    if num_blocks == 1:
        return [cfg.r_max]
    ranks = []
    for i in range(num_blocks):
        t = i / (num_blocks - 1)
        if cfg.schedule == "linear":
            r = cfg.r_max + t * (cfg.r_min - cfg.r_max)
        else:
            r = cfg.r_max * (cfg.r_min / cfg.r_max) ** t
        ranks.append(max(1, int(math.floor(r + 0.5))))
    return ranks


@register_method("vector_lora", VectorLoraConfig, merge=lambda m: merge_lora(m))
def apply_vector_lora(model: nn.Module, cfg: VectorLoraConfig) -> nn.Module:
    """LoRA with a per-block rank schedule, through peft's rank_pattern/alpha_pattern."""
    names = [n for n in _linear_names(model, cfg.targets, "vector_lora") if block_index(model, n) is not None]
    if not names:
        raise ValueError(f"vector_lora: targets {cfg.targets!r} match no layer inside an encoder block")
    ranks = vector_ranks(num_blocks(model), cfg)
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    for name in names:
        r = ranks[block_index(model, name)]
        key = re.escape(name)
        rank_pattern[key] = r
        alpha_pattern[key] = cfg.alpha_ratio * r
    config = LoraConfig(
        r=ranks[0],
        lora_alpha=cfg.alpha_ratio * ranks[0],
        lora_dropout=cfg.dropout,
        target_modules=names,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )
    return _inject(model, config)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA (peft or q/v) layer into its base linear layer and drop the adapter."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            replace_module(model, name, module.get_base_layer())
        elif isinstance(module, QVLoraLinear):
            replace_module(model, name, module.merged())
    return model


def lora_numel(model: nn.Module) -> int:
    """Number of LoRA parameters in the model (peft and q/v variants)."""
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


__all__ = ["apply_lora", "apply_vector_lora", "merge_lora", "vector_ranks", "lora_numel"]
