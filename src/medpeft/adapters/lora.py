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

# Regexes (peft full-match semantics) for SAM's image-encoder linear layers.
TARGET_PRESETS: dict[str, str] = {
    "qkv": r".*vision_encoder\.layers\.\d+\.attn\.qkv",
    "attn": r".*vision_encoder\.layers\.\d+\.attn\.(qkv|proj)",
    "mlp": r".*vision_encoder\.layers\.\d+\.mlp\.(lin1|lin2)",
    "all": r".*vision_encoder\.layers\.\d+\.(attn\.(qkv|proj)|mlp\.(lin1|lin2))",
}


class LoraMethodConfig(MethodConfig):
    """LoRA on the frozen image encoder.

    ``targets``: a preset name (qkv, attn, mlp, all) or a regex fully matching module names.
    ``qv``: adapt only query and value of the fused qkv projection, as SAMed does.
    """

    r: int = Field(4, ge=1)
    alpha: float | None = None  # default: alpha = r (scale 1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: str = "qkv"
    qv: bool = False


class VectorLoraConfig(MethodConfig):
    """Vector-LoRA (DARES): one rank per transformer block, shrinking with depth.

    Either ``ranks`` lists one rank per block, or ``schedule`` interpolates from ``r_max`` at the first
    block to ``r_min`` at the last (``linear`` or ``geometric``). ``alpha_ratio`` sets alpha_i = ratio * r_i.
    """

    ranks: list[int] | None = None
    schedule: Literal["linear", "geometric"] = "linear"
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


def _target_regex(targets: str) -> str:
    return TARGET_PRESETS.get(targets, targets)


def _matching_modules(model: nn.Module, regex: str) -> list[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and re.fullmatch(regex, n)]
    if not names:
        raise ValueError(f"LoRA targets {regex!r} match no linear layer of the model")
    return names


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
    regex = _target_regex(cfg.targets)
    names = _matching_modules(model, regex)
    alpha = cfg.alpha if cfg.alpha is not None else cfg.r
    if cfg.qv:
        return apply_qv_lora(model, names, cfg.r, alpha, cfg.dropout)
    config = LoraConfig(r=cfg.r, lora_alpha=alpha, lora_dropout=cfg.dropout, target_modules=regex)
    return _inject(model, config)


def vector_ranks(num_blocks: int, cfg: VectorLoraConfig) -> list[int]:
    """Per-block ranks for Vector-LoRA."""
    if cfg.ranks is not None:
        if len(cfg.ranks) != num_blocks:
            raise ValueError(
                f"vector_lora.ranks has {len(cfg.ranks)} entries but the encoder has {num_blocks} blocks"
            )
        return list(cfg.ranks)
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


_BLOCK = re.compile(r"vision_encoder\.layers\.(\d+)\.")


@register_method("vector_lora", VectorLoraConfig, merge=lambda m: merge_lora(m))
def apply_vector_lora(model: nn.Module, cfg: VectorLoraConfig) -> nn.Module:
    """LoRA with a per-block rank schedule, through peft's rank_pattern/alpha_pattern."""
    regex = _target_regex(cfg.targets)
    names = _matching_modules(model, regex)
    blocks = sorted({int(m.group(1)) for n in names if (m := _BLOCK.search(n))})
    if not blocks:
        raise ValueError(f"vector_lora targets {regex!r} match no layer inside vision_encoder.layers.N")
    num_blocks = max(blocks) + 1
    ranks = vector_ranks(num_blocks, cfg)
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    for name in names:
        m = _BLOCK.search(name)
        if m is None:
            continue
        r = ranks[int(m.group(1))]
        key = re.escape(name)
        rank_pattern[key] = r
        alpha_pattern[key] = cfg.alpha_ratio * r
    config = LoraConfig(
        r=ranks[0],
        lora_alpha=cfg.alpha_ratio * ranks[0],
        lora_dropout=cfg.dropout,
        target_modules=regex,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )
    return _inject(model, config)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA (peft or q/v) layer into its base linear layer and drop the adapter."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            _replace(model, name, module.get_base_layer())
        elif isinstance(module, QVLoraLinear):
            _replace(model, name, module.merged())
    return model


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def lora_numel(model: nn.Module) -> int:
    """Number of LoRA parameters in the model (peft and q/v variants)."""
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


__all__ = ["apply_lora", "apply_vector_lora", "merge_lora", "vector_ranks", "lora_numel"]
