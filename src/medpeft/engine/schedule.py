"""Learning-rate schedule: linear warm-up ("preheating" in LoRA-SAM) then cosine or poly decay."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def lr_factor(
    step: int, total: int, warmup: int, kind: str, power: float = 0.9, min_ratio: float = 0.0
) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * t))
    elif kind == "poly":
        decay = (1 - t) ** power
    else:
        raise ValueError(f"unknown schedule {kind!r}; expected cosine, poly or constant")
    return min_ratio + (1 - min_ratio) * decay


def build_scheduler(
    optimizer: Optimizer, total: int, warmup: int, kind: str, power: float = 0.9, min_ratio: float = 0.0
) -> LambdaLR:
    """A LambdaLR stepping once per optimizer step."""
    return LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, kind, power, min_ratio))
