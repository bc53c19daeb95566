"""Segmentation losses on logits: soft Dice + BCE, focal as an option (one sigmoid, applied once)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medpeft.config import LossConfig


def _masked_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-(image, class) values [B, C] over the valid entries (all when ``valid`` is None)."""
    if valid is None:
        return values.mean()
    w = valid.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1.0)


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """1 - soft Dice per image and class, averaged (over ``valid`` [B, C] entries); ``smooth`` keeps
    empty masks well defined."""
    prob = torch.sigmoid(logits).flatten(2)
    target = target.flatten(2)
    inter = (prob * target).sum(-1)
    denom = prob.sum(-1) + target.sum(-1)
    return _masked_mean(1.0 - (2.0 * inter + smooth) / (denom + smooth), valid)


def bce_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy from logits, averaged over pixels and the ``valid`` (image, class) entries."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return ce.mean() if valid is None else _masked_mean(ce.flatten(2).mean(-1), valid)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: float = 0.25,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al.) computed from logits with a single sigmoid."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    prob = torch.sigmoid(logits)
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.mean() if valid is None else _masked_mean(loss.flatten(2).mean(-1), valid)


class SegmentationLoss(nn.Module):
    """Weighted sum of Dice, BCE and focal terms; returns the total and each term.

    ``valid`` [B, C] (the batch's ``class_valid``) leaves out classes an image is not annotated for.
    """

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        target = target.to(logits.dtype)
        terms: dict[str, torch.Tensor] = {}
        if self.cfg.dice:
            terms["dice"] = self.cfg.dice * soft_dice_loss(logits, target, valid=valid)
        if self.cfg.bce:
            terms["bce"] = self.cfg.bce * bce_loss(logits, target, valid)
        if self.cfg.focal:
            terms["focal"] = self.cfg.focal * focal_loss(
                logits, target, self.cfg.focal_gamma, self.cfg.focal_alpha, valid
            )
        if not terms:
            raise ValueError("loss: every term has weight 0; set loss.dice, loss.bce or loss.focal")
        total = torch.stack(list(terms.values())).sum()
        return total, {k: float(v.detach()) for k, v in terms.items()}
