"""Depth losses: exact invariances, hand-computed values, masking and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from medpeft.tasks.depth_loss import align_scale_shift, silog_loss, ssi_loss


def _t(rows: list[list[float]], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """One image [1,1,H,W]."""
    return torch.tensor(rows, dtype=dtype)[None, None]


# Hand example: target y = [1, 2, 3, 4], pred p = [1, 3, 2, 4] (row-major 2x2).
# mean p = mean y = 2.5; p - 2.5 = [-1.5, 0.5, -0.5, 1.5], y - 2.5 = [-1.5, -0.5, 0.5, 1.5]
# var p = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25; cov = (2.25 - 0.25 - 0.25 + 2.25) / 4 = 1.0
# scale = 1.0 / 1.25 = 0.8; shift = 2.5 - 0.8 * 2.5 = 0.5
# aligned = 0.8 p + 0.5 = [1.3, 2.9, 2.1, 3.7]; |aligned - y| = [0.3, 0.9, 0.9, 0.3] -> mean 2.4 / 4 = 0.6
HAND_TARGET = [[1.0, 2.0], [3.0, 4.0]]
HAND_PRED = [[1.0, 3.0], [2.0, 4.0]]


def test_align_hand_example() -> None:
    s, t = align_scale_shift(_t(HAND_PRED), _t(HAND_TARGET), torch.ones(1, 1, 2, 2, dtype=torch.bool))
    torch.testing.assert_close(s, torch.tensor([0.8], dtype=torch.float64))
    torch.testing.assert_close(t, torch.tensor([0.5], dtype=torch.float64))


def test_ssi_hand_example() -> None:
    loss = ssi_loss(_t(HAND_PRED), _t(HAND_TARGET), torch.ones(1, 1, 2, 2, dtype=torch.bool))
    assert abs(float(loss) - 0.6) < 1e-12


def test_ssi_zero_for_affine_prediction() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(3, 1, 12, 10, generator=gen) + 0.2
    valid = torch.rand(3, 1, 12, 10, generator=gen) > 0.2
    pred = 3 * target + 2
    assert abs(float(ssi_loss(pred, target, valid))) < 1e-6
    s, t = align_scale_shift(pred, target, valid)
    torch.testing.assert_close(s, torch.full((3,), 1 / 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(t, torch.full((3,), -2 / 3), atol=1e-6, rtol=0)


def _embed(rows: list[list[float]], garbage: float) -> torch.Tensor:
    """The 2x2 ``rows`` in the top-left of a 3x3 image whose other 5 pixels hold ``garbage``."""
    out = torch.full((1, 1, 3, 3), garbage, dtype=torch.float64)
    out[0, 0, :2, :2] = torch.tensor(rows, dtype=torch.float64)
    return out


def test_invalid_pixels_change_nothing() -> None:
    valid = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    valid[..., :2, :2] = True
    for garbage in (0.0, -5.0, 1e6, float("nan"), float("inf")):
        pred = _embed(HAND_PRED, garbage).requires_grad_(True)
        target = _embed(HAND_TARGET, garbage)
        ssi = ssi_loss(pred, target, valid)
        assert abs(ssi.item() - 0.6) < 1e-12
        (grad,) = torch.autograd.grad(ssi, pred)
        assert bool(torch.isfinite(grad).all()) and float(grad[~valid].abs().max()) == 0.0
        sil = silog_loss(pred.detach().abs() + 1, target.abs() + 1, valid)
        ref = silog_loss(_t(HAND_PRED) + 1, _t(HAND_TARGET) + 1, torch.ones(1, 1, 2, 2, dtype=torch.bool))
        assert abs(float(sil) - float(ref)) < 1e-12  # NaN/inf garbage stays NaN/inf: masked out all the same


def test_ssi_skips_images_without_two_valid_pixels() -> None:
    pred = torch.cat([_t(HAND_PRED), torch.full((1, 1, 2, 2), 7.0, dtype=torch.float64)])
    target = torch.cat([_t(HAND_TARGET), torch.full((1, 1, 2, 2), 1.0, dtype=torch.float64)])
    valid = torch.ones(2, 1, 2, 2, dtype=torch.bool)
    valid[1] = False
    valid[1, 0, 0, 0] = True  # a single valid pixel: no fit, image left out
    assert abs(float(ssi_loss(pred, target, valid)) - 0.6) < 1e-12
    s, t = align_scale_shift(pred, target, valid)
    assert s[1].item() == 1.0 and t[1].item() == 0.0


def test_align_constant_prediction_matches_means() -> None:
    pred = torch.full((1, 1, 2, 2), 5.0, dtype=torch.float64)
    s, t = align_scale_shift(pred, _t(HAND_TARGET), torch.ones(1, 1, 2, 2, dtype=torch.bool))
    assert s.item() == 1.0 and t.item() == pytest.approx(2.5 - 5.0)


# SILog hand example: target [1, 2, 3, 4], pred = target * exp(g) with g = [1, 1, 0, 0].
# mean g = 0.5, mean g^2 = 0.5 -> lambda 0.5: sqrt(0.5 - 0.5 * 0.25) = sqrt(0.375) = 0.612372...
#                                 lambda 0.85: sqrt(0.5 - 0.85 * 0.25) = sqrt(0.2875) = 0.536190...
SILOG_TARGET = [[1.0, 2.0], [3.0, 4.0]]
SILOG_PRED = [[math.e, 2 * math.e], [3.0, 4.0]]


@pytest.mark.parametrize(
    ("lam", "expected"), [(0.5, math.sqrt(0.375)), (0.85, math.sqrt(0.2875)), (0.0, math.sqrt(0.5))]
)
def test_silog_hand_example(lam: float, expected: float) -> None:
    valid = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    loss = silog_loss(_t(SILOG_PRED), _t(SILOG_TARGET), valid, variance_focus=lam)
    assert abs(float(loss) - expected) < 1e-12


def test_silog_pooled_over_batch_or_per_image() -> None:
    # second image: g = [0.5, 0.5, 0.5, 0.5] -> per image sqrt(0.25 - 0.5 * 0.25) = sqrt(0.125)
    # pooled 8 pixels: mean g = (1 + 1 + 4 * 0.5) / 8 = 0.5, mean g^2 = (1 + 1 + 4 * 0.25) / 8 = 3/8
    #                  -> sqrt(0.375 - 0.5 * 0.25) = sqrt(0.25) = 0.5
    target = torch.cat([_t(SILOG_TARGET), _t(SILOG_TARGET)])
    pred = torch.cat([_t(SILOG_PRED), _t(SILOG_TARGET) * math.exp(0.5)])
    valid = torch.ones(2, 1, 2, 2, dtype=torch.bool)
    pooled = silog_loss(pred, target, valid)
    per_image = silog_loss(pred, target, valid, per_image=True)
    assert abs(float(pooled) - 0.5) < 1e-12
    assert abs(float(per_image) - (math.sqrt(0.375) + math.sqrt(0.125)) / 2) < 1e-12


def test_silog_scale_invariant_at_lambda_one() -> None:
    target = torch.rand(2, 1, 5, 5) + 0.5
    valid = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    assert float(silog_loss(4.0 * target, target, valid, variance_focus=1.0)) < 2e-3  # floor sqrt(eps)


def test_gradients_finite_including_exact_fit() -> None:
    gen = torch.Generator().manual_seed(1)
    target = torch.rand(2, 1, 8, 8, generator=gen) + 0.1
    valid = torch.rand(2, 1, 8, 8, generator=gen) > 0.3
    for pred0 in (torch.rand(2, 1, 8, 8, generator=gen) + 0.1, target.clone(), torch.zeros(2, 1, 8, 8)):
        for loss_fn in (ssi_loss, silog_loss):
            pred = pred0.clone().requires_grad_(True)
            loss = loss_fn(pred, target, valid)
            loss.backward()
            assert bool(torch.isfinite(loss.detach())) and pred.grad is not None
            assert bool(torch.isfinite(pred.grad).all())


def test_no_valid_pixels_gives_zero_with_graph() -> None:
    pred = torch.full((2, 1, 3, 3), float("nan")).requires_grad_(True)
    valid = torch.zeros(2, 1, 3, 3, dtype=torch.bool)
    for loss_fn in (ssi_loss, silog_loss):
        loss = loss_fn(pred, torch.ones(2, 1, 3, 3), valid)
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, pred)
        assert float(grad.abs().max()) == 0.0


def test_shape_and_mask_errors() -> None:
    x = torch.ones(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"\[B,1,H,W\].*\(2, 4, 4\)"):
        ssi_loss(torch.ones(2, 4, 4), torch.ones(2, 4, 4), torch.ones(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[B,1,H,W\]"):
        silog_loss(x, torch.ones(2, 1, 4, 5), torch.ones(2, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"valid must be a bool tensor, got dtype torch.float32"):
        silog_loss(x, x, x)
    with pytest.raises(ValueError, match=r"variance_focus must be in \[0, 1\], got 1.5"):
        silog_loss(x, x, x.bool(), variance_focus=1.5)
