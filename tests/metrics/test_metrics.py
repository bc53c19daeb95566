"""Metrics layer: hand-computed values, edge-case conventions, and a scipy brute-force cross-check."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from medpeft.metrics import (
    abs_rel,
    assd_per_class,
    binarize,
    delta_accuracy,
    depth_metrics,
    dice_per_class,
    hd95_per_class,
    iou_per_class,
    median_scale,
    rmse,
    rmse_log,
    sq_rel,
    summarize,
    valid_depth_mask,
)

NAN = float("nan")


def _close(actual: torch.Tensor, expected: list, atol: float = 1e-6) -> None:
    torch.testing.assert_close(
        actual, torch.tensor(expected, dtype=torch.float32), atol=atol, rtol=0, equal_nan=True
    )


def _mask(shape: tuple[int, ...], *boxes: tuple[slice, ...]) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool)
    for box in boxes:
        m[box] = True
    return m


# ---------------------------------------------------------------- overlap


def _pred_target_4_6_3() -> tuple[torch.Tensor, torch.Tensor]:
    """pred: 4 pixels (row 0), target: 6 pixels (rows 0-1, cols 1-3); overlap 3."""
    pred = _mask((1, 1, 3, 4), (0, 0, 0, slice(0, 4)))
    target = _mask((1, 1, 3, 4), (0, 0, slice(0, 2), slice(1, 4)))
    return pred, target


def test_dice_iou_known_overlap() -> None:
    pred, target = _pred_target_4_6_3()
    _close(dice_per_class(pred, target), [[2 * 3 / (4 + 6)]])  # 0.6
    _close(iou_per_class(pred, target), [[3 / (4 + 6 - 3)]])  # 3/7
    # numpy and 0/1 integer input give the same numbers; the metric is symmetric
    _close(dice_per_class(pred.numpy().astype(np.uint8), target.numpy()), [[0.6]])
    _close(iou_per_class(target.float(), pred.float()), [[3 / 7]])


def test_empty_target_conventions() -> None:
    e = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    f = _mask((1, 1, 4, 4), (0, 0, slice(1, 3), slice(1, 3)))
    # (pred, target) pairs: empty/empty, nonempty/empty-target, empty/nonempty-target
    pred, target = torch.cat([e, f, e]), torch.cat([e, e, f])
    for fn in (dice_per_class, iou_per_class):
        _close(fn(pred, target), [[1.0], [0.0], [0.0]])
        _close(fn(pred, target, empty_score=NAN), [[NAN], [NAN], [0.0]])
        _close(fn(pred, target, empty_score=0.5), [[0.5], [0.0], [0.0]])


def test_multiclass_batch_shape_and_values() -> None:
    # B=2, C=3 on 4x4; each (b, c) hand-built
    pred = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    target = torch.zeros_like(pred)
    pred[0, 0, 0, :] = True  # 4 px vs target 4 px identical -> 1
    target[0, 0, 0, :] = True
    pred[0, 1, :2, :2] = True  # 4 px vs 2 px inside it -> dice 4/6, iou 2/4
    target[0, 1, 0, :2] = True
    target[0, 2, 3, 3] = True  # empty pred, 1 px target -> 0
    pred[1, 0, :, 0] = True  # disjoint -> 0
    target[1, 0, :, 3] = True
    pred[1, 1, 1, 1] = True  # empty target, 1 px pred -> 0
    # (1, 2): both empty -> 1
    d = dice_per_class(pred, target)
    assert d.shape == (2, 3) and d.dtype == torch.float32
    _close(d, [[1.0, 4 / 6, 0.0], [0.0, 0.0, 1.0]])
    _close(iou_per_class(pred, target), [[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]])


def test_dice_3d() -> None:
    # pred: 2x2x2 cube (8 voxels); target: 2x2x3 box (12) sharing 2x2x2 -> 2*8/20; IoU 8/12
    pred = _mask((1, 1, 4, 4, 4), (0, 0, slice(0, 2), slice(0, 2), slice(0, 2)))
    target = _mask((1, 1, 4, 4, 4), (0, 0, slice(0, 3), slice(0, 2), slice(0, 2)))
    _close(dice_per_class(pred, target), [[0.8]])
    _close(iou_per_class(pred, target), [[8 / 12]])


def test_input_validation() -> None:
    a, b = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5)
    for fn in (dice_per_class, iou_per_class, assd_per_class, hd95_per_class):
        with pytest.raises(ValueError, match=r"\(1, 1, 4, 4\).*\(1, 1, 4, 5\)"):
            fn(a, b)
    with pytest.raises(ValueError, match="binarize"):
        dice_per_class(torch.full((1, 1, 2, 2), 0.7), torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"\[B, C"):
        dice_per_class(torch.ones(4, 4), torch.ones(4, 4))
    with pytest.raises(ValueError, match="spacing"):
        assd_per_class(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4), spacing=(1.0, 1.0, 1.0))


def test_binarize() -> None:
    logits = torch.tensor([-2.0, 0.0, 0.1, 3.0])
    assert binarize(logits).tolist() == [False, False, True, True]
    assert binarize(np.array([0.2, 0.5, 0.9]), threshold=0.5).tolist() == [False, False, True]


# ---------------------------------------------------------------- surface


def _brute_force(p: np.ndarray, t: np.ndarray, spacing: tuple[float, ...] | None) -> tuple[float, float]:
    """Independent ASSD/HD95: erosion surfaces and scipy EDT; HD95 = max of directed 95th percentiles."""
    edge = [m & ~ndimage.binary_erosion(m) for m in (p, t)]
    d_pt = ndimage.distance_transform_edt(~edge[1], sampling=spacing)[edge[0]]
    d_tp = ndimage.distance_transform_edt(~edge[0], sampling=spacing)[edge[1]]
    assd = (d_pt.sum() + d_tp.sum()) / (d_pt.size + d_tp.size)
    return float(assd), float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def _squares() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 4x4 squares in a 10x10 image, the second shifted by 2 pixels along x (axis -1)."""
    a = _mask((1, 1, 10, 10), (0, 0, slice(2, 6), slice(2, 6)))
    b = _mask((1, 1, 10, 10), (0, 0, slice(2, 6), slice(4, 8)))
    return a, b


# Hand computation: each square's surface is its 12-pixel ring. From ring A to ring B the directed
# distances are four 0s (shared pixels), four 1s and four 2s, in pixels; the same from B to A.
# ASSD = 24 / 24 = 1, HD95 = 2 (both top order statistics are 2).
# spacing (1.0, 0.5): every nearest neighbour stays along x, so all distances halve: ASSD 0.5, HD95 1.
# spacing (0.5, 1.0): the two side pixels next to the shared edge, 1 px from it along x, are now
# nearer (0.5) to the ring corner above/below, so each direction sums to 0*4 + 0.5*2 + 1*2 + 2*4 = 11:
# ASSD = 22 / 24, HD95 = 2.
@pytest.mark.parametrize(
    ("spacing", "assd", "hd95"),
    [(None, 1.0, 2.0), ((1.0, 0.5), 0.5, 1.0), ((0.5, 1.0), 22 / 24, 2.0)],
)
def test_surface_shifted_squares(spacing: tuple[float, float] | None, assd: float, hd95: float) -> None:
    a, b = _squares()
    _close(assd_per_class(a, b, spacing), [[assd]])
    _close(hd95_per_class(a, b, spacing), [[hd95]])
    ref = _brute_force(a[0, 0].numpy(), b[0, 0].numpy(), spacing)
    assert ref == pytest.approx((assd, hd95))


def test_surface_3d_anisotropic() -> None:
    # Two 3x3x3 cubes, shifted one slice along axis 0 with spacing (3, 1, 1). Each surface has 26
    # voxels; per direction: 9 outer-face voxels at 3 mm, 1 voxel lying at the other cube's interior
    # centre at 1 mm (in-plane neighbour), 16 shared surface voxels at 0. ASSD = 2 * 28 / 52 = 14/13, HD95 = 3. With unit spacing: 2 * 10 / 52, 1.
    a = _mask((1, 1, 8, 8, 8), (0, 0, slice(2, 5), slice(2, 5), slice(2, 5)))
    b = _mask((1, 1, 8, 8, 8), (0, 0, slice(3, 6), slice(2, 5), slice(2, 5)))
    _close(assd_per_class(a, b, (3.0, 1.0, 1.0)), [[14 / 13]], atol=1e-5)
    _close(hd95_per_class(a, b, (3.0, 1.0, 1.0)), [[3.0]])
    _close(assd_per_class(a, b), [[20 / 52]], atol=1e-5)
    _close(hd95_per_class(a, b), [[1.0]])
    assert _brute_force(a[0, 0].numpy(), b[0, 0].numpy(), (3.0, 1.0, 1.0)) == pytest.approx((14 / 13, 3.0))


def test_surface_matches_brute_force_on_irregular_shapes() -> None:
    rng = np.random.default_rng(0)
    spacing = (0.7, 1.3)
    noise = ndimage.gaussian_filter(rng.standard_normal((2, 24, 24)), 2.0)
    p, t = noise[0] > 0.05, noise[1] > 0.0
    ref = _brute_force(p, t, spacing)
    pt, tt = torch.from_numpy(p)[None, None], torch.from_numpy(t)[None, None]
    assert assd_per_class(pt, tt, spacing).item() == pytest.approx(ref[0], rel=1e-5)
    assert hd95_per_class(pt, tt, spacing).item() == pytest.approx(ref[1], rel=1e-5)


def test_surface_empty_cases() -> None:
    a, _ = _squares()
    e = torch.zeros_like(a)
    # rows: both empty, empty pred, empty target, both non-empty (identical -> 0)
    pred, target = torch.cat([e, e, a, a]), torch.cat([e, a, e, a])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # empty cases are handled here, so MONAI must not warn
        for fn in (assd_per_class, hd95_per_class):
            _close(fn(pred, target, (0.8, 0.8)), [[0.0], [NAN], [NAN], [0.0]])
    # multi-class: one class empty in both, one defined
    mc_p = torch.cat([a, e], dim=1)
    mc_t = torch.cat([_squares()[1], e], dim=1)
    _close(assd_per_class(mc_p, mc_t), [[1.0, 0.0]])


# ---------------------------------------------------------------- depth

# valid pixels: (pred, gt) = (2, 2), (3, 2), (2, 4), (19, 10); gt = 0 and gt = nan are invalid
PRED = np.array([2.0, 3.0, 2.0, 19.0, 50.0, 7.0])
GT = np.array([2.0, 2.0, 4.0, 10.0, 0.0, NAN])


def test_depth_metrics_hand_values() -> None:
    assert abs_rel(PRED, GT) == pytest.approx((0 + 1 / 2 + 2 / 4 + 9 / 10) / 4)  # 0.475
    assert sq_rel(PRED, GT) == pytest.approx((0 + 1 / 2 + 4 / 4 + 81 / 10) / 4)  # 2.4
    assert rmse(PRED, GT) == pytest.approx(math.sqrt((0 + 1 + 4 + 81) / 4))
    logs = [0.0, math.log(1.5), math.log(2.0), math.log(1.9)]
    assert rmse_log(PRED, GT) == pytest.approx(math.sqrt(sum(x * x for x in logs) / 4))
    # ratios max(p/g, g/p): 1, 1.5, 2, 1.9 against 1.25, 1.5625, 1.953125
    assert delta_accuracy(PRED, GT) == pytest.approx(1 / 4)
    assert delta_accuracy(PRED, GT, power=2) == pytest.approx(2 / 4)
    assert delta_accuracy(PRED, GT, power=3) == pytest.approx(3 / 4)
    assert delta_accuracy(np.array([5.0, 4.0]), np.array([4.0, 5.0])) == 0.0  # ratio exactly 1.25: strict
    assert depth_metrics(torch.tensor(PRED), torch.tensor(GT))["a3"] == pytest.approx(3 / 4)


def test_depth_valid_mask_and_bounds() -> None:
    assert valid_depth_mask(GT).tolist() == [True, True, True, True, False, False]
    assert valid_depth_mask(np.array([np.inf, -1.0, 1.0])).tolist() == [False, False, True]
    # max_depth is strict and drops gt = 10; min_depth is strict and drops gt = 2
    assert abs_rel(PRED, GT, max_depth=10.0) == pytest.approx(1 / 3)
    assert abs_rel(PRED, GT, min_depth=2.0) == pytest.approx((2 / 4 + 9 / 10) / 2)
    user = np.array([True, False, True, True, True, True])
    assert abs_rel(PRED, GT, mask=user) == pytest.approx((0 + 2 / 4 + 9 / 10) / 3)
    assert math.isnan(rmse(PRED, GT, min_depth=100.0))
    with pytest.raises(ValueError, match="pred must be > 0"):
        rmse_log(np.array([0.0, 1.0]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="pred must be > 0"):  # a negative pred would pass max(ratio) < 1.25
        delta_accuracy(np.array([-1.0]), np.array([1.0]))
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        rmse(np.ones(3), np.ones(2))


def test_median_scale() -> None:
    # valid medians average the middle pair: gt (4 + 7) / 2 = 5.5, pred (2 + 3) / 2 = 2.5 -> 2.2
    # (torch.median's lower median would give 2.0; including the invalid gt = 0 pixel, 4/3)
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])
    gt = torch.tensor([2.0, 4.0, 7.0, 8.0, 0.0])
    scaled, ratio = median_scale(pred, gt)
    assert ratio == pytest.approx(2.2)
    torch.testing.assert_close(scaled, pred * 2.2)
    _, ratio = median_scale(pred, gt, torch.tensor([True, True, True, False, True]))
    assert ratio == pytest.approx(4.0 / 2.0)  # odd count: medians of (2, 4, 7) and (1, 2, 3)


# ---------------------------------------------------------------- summarize


def test_summarize_nan_aware() -> None:
    values = torch.tensor([[0.5, NAN, NAN], [1.0, 0.2, NAN], [NAN, 0.4, NAN]])
    s = summarize(values, ["liver", "spleen", "absent"])
    assert s["per_class"]["liver"] == pytest.approx({"mean": 0.75, "std": 0.25, "n_valid": 2, "n": 3})
    assert s["per_class"]["spleen"] == pytest.approx({"mean": 0.3, "std": 0.1, "n_valid": 2, "n": 3})
    assert s["per_class"]["absent"] == {"mean": None, "std": None, "n_valid": 0, "n": 3}
    assert s["mean"] == pytest.approx((0.75 + 0.3) / 2)
    json.dumps(s, allow_nan=False)  # JSON-safe
    assert summarize(np.array([0.2, 0.4]), ["a", "b"])["mean"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="len\\(names\\)"):
        summarize(values, ["a", "b"])
