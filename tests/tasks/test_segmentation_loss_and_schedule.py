"""Loss terms and the warm-up + decay schedule against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medpeft.config import LossConfig
from medpeft.engine.schedule import lr_factor
from medpeft.tasks.segmentation_loss import SegmentationLoss, focal_loss, soft_dice_loss


def test_soft_dice_hand_value() -> None:
    logits = torch.full((1, 1, 2, 2), 100.0)  # sigmoid ~ 1 everywhere
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # inter = 2, denom = 4 + 2 -> 1 - (2*2 + 1) / (6 + 1)
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - 5 / 7, abs=1e-6)


def test_focal_uses_one_sigmoid() -> None:
    logits = torch.tensor([0.0, 2.0])
    target = torch.tensor([1.0, 0.0])
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    expected = (ce * torch.tensor([1 - p[0], p[1]]) ** 2 * torch.tensor([0.25, 0.75])).mean()
    assert focal_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_weighted_sum_and_zero_weights() -> None:
    logits, target = torch.randn(2, 3, 8, 8), (torch.rand(2, 3, 8, 8) > 0.5).float()
    total, terms = SegmentationLoss(LossConfig(dice=2.0, bce=0.5, focal=1.0))(logits, target)
    assert set(terms) == {"dice", "bce", "focal"}
    assert total.item() == pytest.approx(sum(terms.values()), rel=1e-5)
    assert terms["bce"] == pytest.approx(
        0.5 * F.binary_cross_entropy_with_logits(logits, target).item(), rel=1e-5
    )
    with pytest.raises(ValueError, match="every term has weight 0"):
        SegmentationLoss(LossConfig(dice=0, bce=0, focal=0))(logits, target)


def test_warmup_then_cosine_and_poly() -> None:
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(55, 100, 10, "poly", power=0.9) == pytest.approx(0.5**0.9)
    assert lr_factor(100, 100, 0, "cosine", min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(50, 100, 0, "constant") == 1.0
