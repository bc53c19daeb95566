"""The pose network of self-supervised depth: two frames stacked -> the relative camera motion.

A MONAI ResNet encoder (6 input channels: target and source RGB; no torchvision) pooled to a vector,
then a linear layer to axis-angle and translation, scaled by 0.01 as monodepth2 does so training starts
near the identity motion.
"""

from __future__ import annotations

from typing import Literal

import torch
from monai.networks.nets import ResNet, resnet10, resnet18
from torch import nn

PoseEncoder = Literal["resnet18", "resnet10", "tiny"]


def _encoder(name: PoseEncoder) -> tuple[nn.Module, int]:
    if name == "resnet18":
        return resnet18(spatial_dims=2, n_input_channels=6, feed_forward=False), 512
    if name == "resnet10":
        return resnet10(spatial_dims=2, n_input_channels=6, feed_forward=False), 512
    if name == "tiny":  # for tests and CPU benchmarks
        return ResNet(
            "basic", [1, 1, 1, 1], [16, 32, 64, 64], spatial_dims=2, n_input_channels=6, feed_forward=False
        ), 64
    raise ValueError(f"unknown pose encoder {name!r}; expected resnet18, resnet10 or tiny")


class PoseNet(nn.Module):
    """``(target, source)`` images ``[B, 3, H, W]`` -> axis-angle ``[B, 3]`` and translation ``[B, 3]``
    of the motion from the target camera to the source camera."""

    def __init__(self, encoder: PoseEncoder = "resnet18") -> None:
        super().__init__()
        self.encoder, width = _encoder(encoder)
        self.head = nn.Linear(width, 6)  # default init; the 0.01 output scale keeps motions small
        nn.init.zeros_(self.head.bias)

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        motion = 0.01 * self.head(self.encoder(torch.cat([target, source], 1)))
        return motion[:, :3], motion[:, 3:]
