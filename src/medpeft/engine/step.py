"""The loss of one training micro-batch: the task's loss plus every configured method's loss term.

Used by the training loop and by the benchmarks, so that what is timed is what trains.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medpeft.adapters.registry import AdapterMethod, get_method
from medpeft.config import Config, method_configs
from medpeft.tasks.base import Task


def method_penalties(cfg: Config) -> list[AdapterMethod]:
    """The configured methods that add a loss term (S-SAM's regulariser), in config order."""
    return [m for n, _ in method_configs(cfg.adapters) if (m := get_method(n)).penalty is not None]


def training_loss(
    task: Task,
    penalties: list[AdapterMethod],
    model: nn.Module,
    batch: dict[str, Any],
    step: int,
    micro: int,
    unwrapped: nn.Module | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and logged terms; ``unwrapped`` is the model without a distributed wrapper."""
    loss, terms = task.loss(model, batch, step, micro)
    for method in penalties:
        penalty = method.penalty(unwrapped if unwrapped is not None else model)
        if penalty.requires_grad:
            loss = loss + penalty
            terms[method.penalty_name] = float(penalty.detach())
    return loss, terms
