"""The radial (SO(3)-steerable, scalar-field) patch embedding: radially symmetric kernels, exact
equivariance to 90-degree rotations of a cubic input, and side-tuning that starts at the frozen model."""

from __future__ import annotations

import torch
from torch import nn

from medpeft.models.steerable import RadialPatchEmbedding, SideTunedPatchEmbedding, radial_basis


def test_kernels_depend_only_on_the_distance_from_the_centre() -> None:
    basis = radial_basis((4, 4, 4), 3)
    assert basis.shape == (3, 4, 4, 4) and torch.allclose(basis.sum(dim=(1, 2, 3)), torch.ones(3))
    kernel = RadialPatchEmbedding(2, 5, (4, 4, 4), bases=3).kernel()
    for dims in ((2, 3), (2, 4), (3, 4)):
        assert torch.allclose(kernel, torch.rot90(kernel, 1, dims), atol=1e-7)  # every 90-degree turn
    assert torch.allclose(kernel, kernel.flip(2), atol=1e-7)


def test_embedding_is_equivariant_to_90_degree_rotations() -> None:
    torch.manual_seed(0)
    embed = RadialPatchEmbedding(1, 6, (4, 4, 4), bases=3)
    x = torch.randn(2, 1, 12, 12, 12)
    y = embed(x)
    for dims in ((2, 3), (2, 4), (3, 4)):
        for k in (1, 2, 3):
            assert torch.allclose(embed(torch.rot90(x, k, dims)), torch.rot90(y, k, dims), atol=1e-5)
    plain = nn.Conv3d(1, 6, 4, stride=4)  # an ordinary patch embedding is not
    assert not torch.allclose(plain(torch.rot90(x, 1, (3, 4))), torch.rot90(plain(x), 1, (3, 4)), atol=1e-3)


def test_side_tuning_starts_at_the_frozen_embedding_and_trains_only_the_side() -> None:
    torch.manual_seed(0)
    frozen = nn.Conv3d(1, 8, 4, stride=4)
    side = SideTunedPatchEmbedding(frozen, radial_channels=4, bases=3)
    x = torch.randn(1, 1, 8, 8, 8)
    assert torch.allclose(side(x), frozen(x), atol=1e-6)
    side(x).square().mean().backward()
    assert frozen.weight.grad is None and side.adapter.weight.grad is not None
    trainable = sum(p.numel() for p in side.parameters() if p.requires_grad)
    assert trainable == 4 * 1 * 3 + 4 + (8 + 4) * 8 + 8  # radial weights + bias, adapter
