"""Fusion building blocks: token grids without the CLS token, the depth stem, cross-attention fusion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medpeft.models.fusion import CrossAttentionFusion, DepthStem, tokens_to_grid


def test_tokens_to_grid_drops_cls_and_keeps_the_last_patch() -> None:
    b, h, w, c = 2, 3, 4, 5
    patches = torch.arange(b * h * w * c, dtype=torch.float32).reshape(b, h * w, c)
    tokens = torch.cat([torch.full((b, 1, c), -1.0), patches], dim=1)  # CLS first
    grid = tokens_to_grid(tokens, h, w)
    assert grid.shape == (b, c, h, w) and not (grid == -1).any()
    torch.testing.assert_close(grid[:, :, -1, -1], patches[:, -1])  # the release lost this one
    torch.testing.assert_close(grid[:, :, 0, 1], patches[:, 1])
    with pytest.raises(ValueError, match="do not make a 3x3 grid"):
        tokens_to_grid(tokens, 3, 3)


def test_depth_stem_downsamples_to_the_feature_grid() -> None:
    stem = DepthStem(width=32, stride=16)
    out = stem(torch.rand(2, 1, 64, 96))
    assert out.shape == (2, 32, 4, 6)
    with pytest.raises(ValueError, match="power of two"):
        DepthStem(stride=12)


@pytest.mark.parametrize("direction", ["depth_queries_rgb", "rgb_queries_depth", "both"])
@pytest.mark.parametrize("residual", [True, False])
def test_fusion_shapes_and_gradients(direction: str, residual: bool) -> None:
    torch.manual_seed(0)
    fusion = CrossAttentionFusion(24, 40, width=16, heads=2, direction=direction, residual=residual)
    rgb = torch.randn(2, 24, 8, 8, requires_grad=True)
    depth = torch.randn(2, 40, 4, 4, requires_grad=True)  # a coarser depth grid is resized to the RGB one
    out = fusion(rgb, depth)
    assert out.shape == (2, 16, 8, 8)
    out.square().mean().backward()
    assert rgb.grad.abs().sum() > 0 and depth.grad.abs().sum() > 0


def test_without_residual_it_is_the_bare_attention_of_depth_queries() -> None:
    torch.manual_seed(0)
    fusion = CrossAttentionFusion(16, 16, width=16, heads=2, residual=False).eval()
    fusion.rgb_proj, fusion.depth_proj = nn.Identity(), nn.Identity()  # compare the attention alone
    rgb, depth = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 4, 4)
    r, d = rgb.flatten(2).transpose(1, 2), depth.flatten(2).transpose(1, 2)
    expected = fusion.depth_to_rgb(d, r, r)[0].transpose(1, 2).reshape(1, 16, 4, 4)
    torch.testing.assert_close(fusion(rgb, depth), expected)
    with_norm = CrossAttentionFusion(16, 16, width=16, heads=2).eval()
    with_norm.rgb_proj, with_norm.depth_proj = nn.Identity(), nn.Identity()
    with_norm.depth_to_rgb.load_state_dict(fusion.depth_to_rgb.state_dict())
    manual = with_norm.norm(fusion.depth_to_rgb(d, r, r)[0] + d).transpose(1, 2).reshape(1, 16, 4, 4)
    torch.testing.assert_close(with_norm(rgb, depth), manual)


def test_fusion_configuration_errors() -> None:
    with pytest.raises(ValueError, match="unknown fusion direction 'sideways'"):
        CrossAttentionFusion(8, 8, width=8, heads=2, direction="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="divisible by heads"):
        CrossAttentionFusion(8, 8, width=10, heads=3)
