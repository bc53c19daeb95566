"""Cross-attention fusion of RGB and depth feature maps (the SRFT-GaLore landmark system's fusion),
a depth-map stem, and DINOv2 tokens to a feature grid: building blocks of depth-guided segmentation.

Written with ``nn.MultiheadAttention`` because the fusion is the paper's own module, not a library's.
The release's choices are options here, and its bugs are not carried over: tokens become a grid with
the CLS token removed (the release kept CLS and dropped the last patch), and residual + LayerNorm is on
by default (``residual=False`` reproduces the release's bare attention output).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Direction = Literal["depth_queries_rgb", "rgb_queries_depth", "both"]
DIRECTIONS: tuple[str, ...] = ("depth_queries_rgb", "rgb_queries_depth", "both")


def tokens_to_grid(tokens: torch.Tensor, height: int, width: int, prefix_tokens: int = 1) -> torch.Tensor:
    """ViT tokens ``[B, prefix + h*w, C]`` (CLS and any register tokens first) -> grid ``[B, C, h, w]``."""
    b, n, c = tokens.shape
    if n != prefix_tokens + height * width:
        raise ValueError(
            f"{n} tokens do not make a {height}x{width} grid after {prefix_tokens} prefix token(s) "
            f"(expected {prefix_tokens + height * width})"
        )
    return tokens[:, prefix_tokens:].transpose(1, 2).reshape(b, c, height, width)


class DepthStem(nn.Module):
    """A depth map ``[B, 1, H, W]`` -> features ``[B, width, H/stride, W/stride]``: stride-2 3x3 convolutions
    with GroupNorm and GELU, for depth read from files instead of a depth network."""

    def __init__(self, width: int = 256, stride: int = 16) -> None:
        super().__init__()
        steps = stride.bit_length() - 1
        if stride < 2 or 2**steps != stride:
            raise ValueError(f"stride must be a power of two >= 2, got {stride}")
        layers: list[nn.Module] = []
        channels = 1
        for i in range(steps):
            out = width if i == steps - 1 else max(16, width // 2 ** (steps - 1 - i))
            layers += [
                nn.Conv2d(channels, out, 3, stride=2, padding=1),
                nn.GroupNorm(min(8, out), out),
                nn.GELU(),
            ]
            channels = out
        self.layers = nn.Sequential(*layers)

    def forward(self, depth: torch.Tensor) -> torch.Tensor:
        return self.layers(depth)


class CrossAttentionFusion(nn.Module):
    """Fuse an RGB map ``[B, C_rgb, h, w]`` with a depth map ``[B, C_depth, h', w']`` on the RGB grid.

    ``depth_queries_rgb`` (the paper): depth tokens attend to RGB tokens; ``rgb_queries_depth`` the
    reverse; ``both``: the mean of the two. Each side is first projected to ``width`` channels (1x1
    convolution) and the depth map resized to the RGB grid (bilinear). With ``residual`` the queries are
    added back and the sum normalised (LayerNorm); without, the attention output is returned as it is.
    ``out_channels`` (default ``width``): a 1x1 projection to the decoder's embedding width.
    """

    def __init__(
        self,
        rgb_channels: int,
        depth_channels: int,
        width: int = 256,
        heads: int = 2,
        direction: Direction = "depth_queries_rgb",
        residual: bool = True,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        if direction not in DIRECTIONS:
            raise ValueError(
                f"unknown fusion direction {direction!r}; expected one of: {', '.join(DIRECTIONS)}"
            )
        if width % heads:
            raise ValueError(f"fusion width {width} must be divisible by heads {heads}")
        self.direction, self.residual = direction, residual
        self.rgb_proj = nn.Conv2d(rgb_channels, width, 1)
        self.depth_proj = nn.Conv2d(depth_channels, width, 1)
        self.depth_to_rgb = (
            nn.MultiheadAttention(width, heads, batch_first=True)
            if direction != "rgb_queries_depth"
            else None
        )
        self.rgb_to_depth = (
            nn.MultiheadAttention(width, heads, batch_first=True)
            if direction != "depth_queries_rgb"
            else None
        )
        self.norm = nn.LayerNorm(width) if residual else None
        out_channels = out_channels or width
        self.out_proj = nn.Conv2d(width, out_channels, 1) if out_channels != width else nn.Identity()

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        b, _, h, w = rgb.shape
        if depth.shape[-2:] != (h, w):
            depth = F.interpolate(depth, size=(h, w), mode="bilinear", align_corners=False)
        r = self.rgb_proj(rgb).flatten(2).transpose(1, 2)  # [B, hw, width]
        d = self.depth_proj(depth).flatten(2).transpose(1, 2)
        outs, queries = [], []
        if self.depth_to_rgb is not None:
            outs.append(self.depth_to_rgb(d, r, r, need_weights=False)[0])
            queries.append(d)
        if self.rgb_to_depth is not None:
            outs.append(self.rgb_to_depth(r, d, d, need_weights=False)[0])
            queries.append(r)
        fused = torch.stack(outs).mean(0)
        if self.norm is not None:
            fused = self.norm(fused + torch.stack(queries).mean(0))
        return self.out_proj(fused.transpose(1, 2).reshape(b, -1, h, w))
