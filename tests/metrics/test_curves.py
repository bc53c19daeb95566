"""Curve metrics against hand-computed values, and the empty-curve conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medpeft.metrics import assd_per_class
from medpeft.metrics.curves import curve_scores


def _line(row: int, c0: int, c1: int, shape: tuple[int, int] = (12, 20)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[row, c0:c1] = True
    return m


def test_parallel_curves_two_pixels_apart() -> None:
    s = curve_scores(_line(7, 0, 10), _line(5, 0, 10))
    assert (s.dice, s.assd, s.status) == (0.0, 2.0, "ok")
    assert curve_scores(_line(7, 0, 10), _line(5, 0, 10), spacing=(0.5, 1.0)).assd == 1.0  # rows are 0.5 mm


def test_half_curve_differs_from_monai_pooled_assd() -> None:
    pred, gt = _line(5, 0, 5), _line(5, 0, 10)
    s = curve_scores(pred, gt)
    # pred -> gt: every pixel on the curve, 0. gt -> pred: 0 x5, then 1, 2, 3, 4, 5: mean 15 / 10 = 1.5.
    assert s.assd == pytest.approx((0.0 + 1.5) / 2) and s.dice == pytest.approx(2 * 5 / 15)
    pooled = float(assd_per_class(torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None])[0, 0])
    assert pooled == pytest.approx(15 / 15)  # MONAI pools both directions: (0 * 5 + 15) / (5 + 10)


def test_empty_conventions_are_explicit() -> None:
    empty = np.zeros((12, 20), bool)
    assert curve_scores(empty, empty) == curve_scores(empty, empty.copy())
    both = curve_scores(empty, empty)
    assert (both.dice, both.assd, both.status) == (1.0, 0.0, "both_empty")
    miss = curve_scores(empty, _line(5, 0, 10))
    assert (miss.dice, miss.status) == (0.0, "pred_empty") and miss.assd == pytest.approx(math.hypot(12, 20))
    extra = curve_scores(_line(5, 0, 10), empty, spacing=(2.0, 1.0))
    assert extra.status == "gt_empty" and extra.assd == pytest.approx(math.hypot(24, 20))
    with pytest.raises(ValueError, match="one shape"):
        curve_scores(empty, np.zeros((3, 3), bool))
