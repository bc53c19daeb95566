"""A light multi-scale decoder over an encoder's FPN levels (the landmark release's conv decoder with
SAM2's FPN skips), and per-class logits that make a softmax over mutually exclusive classes.

Hand-written because it is the paper's small head, not a library's; MONAI's FPN blocks expect a
different backbone interface.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding=1),
        nn.GroupNorm(min(8, channels_out), channels_out),
        nn.GELU(),
    )


class FPNDecoder(nn.Module):
    """Levels ``[B, C_i, h_i, w_i]`` (finest first) -> logits ``[B, num_classes, H, W]``.

    Top-down: the coarsest level is projected to ``width`` channels, upsampled 2x onto each finer level
    (projected likewise, 1x1) and added, each sum refined by a 3x3 conv block; a 1x1 head gives the
    class logits, bilinearly upsampled to the image size.
    """

    def __init__(self, channels: list[int], num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.refine = nn.ModuleList(_block(width, width) for _ in channels)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, levels: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        if len(levels) != len(self.lateral):
            raise ValueError(f"FPNDecoder built for {len(self.lateral)} levels, got {len(levels)}")
        x = self.refine[-1](self.lateral[-1](levels[-1]))
        for i in range(len(levels) - 2, -1, -1):
            skip = self.lateral[i](levels[i])
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False) + skip
            x = self.refine[i](x)
        return F.interpolate(self.head(x), size=size, mode="bilinear", align_corners=False)


def softmax_logits(scores: torch.Tensor) -> torch.Tensor:
    """Per-class scores ``[B, C, H, W]`` -> logits whose sigmoid is the softmax probability of each
    class against the others and a background scored 0: ``z_c - logsumexp_{j != c}(0, z_j)``.

    So mutually exclusive classes train and evaluate through the same sigmoid-based loss, threshold and
    metrics as independent ones (probabilities of all classes sum to at most 1).
    """
    b, c, h, w = scores.shape
    every = torch.cat([scores.new_zeros(b, 1, h, w), scores], 1)  # [B, C+1, H, W], background first
    drop = torch.zeros(c, c + 1, dtype=scores.dtype, device=scores.device)
    drop[torch.arange(c), torch.arange(c) + 1] = float("-inf")  # row c leaves class c out
    others = torch.logsumexp(every[:, None] + drop[None, :, :, None, None], dim=2)
    return scores - others
