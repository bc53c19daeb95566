"""Zoom-out-zoom-in inference (SegVol): it finds the object's region from the coarse pass and matches the
full-resolution sliding window inside it, covering far fewer voxels."""

from __future__ import annotations

import torch

from medpeft.engine.zoom import Frame, region_of_interest, sliding_window, zoom_out_zoom_in


def _predictor(calls: list[int]):
    def predict(x: torch.Tensor, frame: Frame) -> torch.Tensor:  # a local model: logits from intensity
        calls.append(int(x.shape[0]))
        return 20.0 * (x[:, :1] - 0.5)

    return predict


def _volume() -> torch.Tensor:
    v = torch.zeros(1, 1, 64, 96, 96)
    v[..., 20:36, 30:54, 50:70] = 1.0  # one bright object
    return v


def test_zoom_finds_the_object_and_matches_the_sliding_window_inside() -> None:
    volume, calls = _volume(), []
    full = sliding_window(_predictor(calls), volume, (16, 32, 32))
    full_windows = len(calls)
    calls.clear()
    result = zoom_out_zoom_in(_predictor(calls), volume, (16, 32, 32), margin=0.25)
    z0, y0, x0, z1, y1, x1 = result.roi
    assert z0 <= 20 and z1 >= 36 and y0 <= 30 and y1 >= 54 and x0 <= 50 and x1 >= 70  # holds the object
    inside = (slice(None), slice(None), slice(z0, z1), slice(y0, y1), slice(x0, x1))
    assert torch.allclose(result.logits[inside], full[inside], atol=1e-4)
    assert ((result.logits > 0) == (full > 0)).float().mean() > 0.999
    assert result.zoom_in_voxels < volume[0, 0].numel() / 4 and len(calls) < full_windows / 2


def test_prompt_box_sets_the_region_and_nothing_found_skips_zoom_in() -> None:
    calls: list[int] = []
    result = zoom_out_zoom_in(_predictor(calls), _volume(), (16, 32, 32), box=(0, 0, 0, 8, 8, 8), margin=0.0)
    assert result.roi == (0, 0, 0, 16, 32, 32)  # grown to one window, kept inside the volume
    empty = zoom_out_zoom_in(_predictor(calls), torch.zeros(1, 1, 32, 32, 32), (16, 16, 16))
    assert empty.roi is None and empty.zoom_in_voxels == 0
    mask = torch.zeros(10, 10, 10, dtype=torch.bool)
    mask[8:10, 0:2, 4:6] = True
    assert region_of_interest(mask, 0.5, (4, 4, 4)) == (6, 0, 3, 10, 4, 7)


def test_every_window_knows_where_it_lies() -> None:
    """A predictor that draws a box given in full-volume voxels through its frame reproduces that box
    exactly from any sliding window and from the zoom-out pass (small inputs are padded, as MONAI does)."""
    box = torch.tensor([5.0, 10.0, 7.0, 14.0, 30.0, 20.0])  # (z0, y0, x0, z1, y1, x1), inclusive

    def draw(x: torch.Tensor, frame: Frame) -> torch.Tensor:
        lo, hi = frame.map(box[:3]), frame.map(box[3:])
        grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in x.shape[2:]], indexing="ij")
        inside = torch.ones(x.shape[2:], dtype=torch.bool)
        for g, a, b in zip(grids, lo, hi, strict=True):
            inside &= (g >= a - 1e-4) & (g <= b + 1e-4)
        return torch.where(inside, 10.0, -10.0)[None, None]

    volume = torch.zeros(1, 1, 20, 40, 12)  # x is thinner than the window: padded
    logits = sliding_window(draw, volume, (8, 16, 16), overlap=0.5)
    expected = torch.zeros(20, 40, 12, dtype=torch.bool)
    expected[5:15, 10:31, 7:21] = True
    assert torch.equal(logits[0, 0] > 0, expected)
    zoomed = zoom_out_zoom_in(draw, volume, (8, 16, 16), margin=0.1)
    assert torch.equal(zoomed.logits[0, 0] > 0, expected)


def test_a_stray_false_positive_does_not_widen_the_region() -> None:
    volume = _volume()
    volume[..., 52:60, 2:12, 2:12] = 1.0  # a smaller blob far from the object, found by the coarse pass too
    result = zoom_out_zoom_in(_predictor([]), volume, (16, 32, 32), margin=0.25)
    z0, y0, x0, z1, y1, x1 = result.roi
    assert (z0, y0, x0, z1, y1, x1) == (16, 24, 44, 40, 60, 76)  # the object's region only (with the
    # blob it would span (4, 0, 0, 64, 77, 96))
