"""Depth Anything + a pose network for self-supervised depth from video (monodepth2 / DARES).

Depth: the DPT head applied to each of the neck's fused levels gives disparity at several scales (all at
the input size), squashed by a sigmoid and mapped to ``[1 / max_depth, 1 / min_depth]`` as monodepth2's
``disp_to_depth``. The model's plain call returns that (finest) disparity with ``kind = "selfsup"``: it is
known up to scale, so evaluation inverts it and median-scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medpeft.models.pose import PoseEncoder, PoseNet


class SelfSupervisedDepth(nn.Module):
    """``depth``: a :class:`~medpeft.backbones.depth_anything.model.DepthEstimator`; methods target it
    (``target_table``), the pose network always trains."""

    kind = "selfsup"
    part_prefixes = {"pose.": "pose_net"}

    def __init__(
        self,
        depth: nn.Module,
        min_depth: float = 0.1,
        max_depth: float = 150.0,
        scales: int = 4,
        pose_encoder: PoseEncoder = "resnet18",
    ) -> None:
        super().__init__()
        if not 0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
        levels = len(depth.dpt.config.neck_hidden_sizes)
        if not 1 <= scales <= levels:
            raise ValueError(f"scales must be 1..{levels} (the DPT neck's levels), got {scales}")
        self.depth, self.pose = depth, PoseNet(pose_encoder)
        self.min_depth, self.max_depth, self.scales = float(min_depth), float(max_depth), int(scales)

    @property
    def target_table(self) -> dict[str, str]:
        return {k: r"depth\.(?:.*\.)?" + v for k, v in self.depth.target_table.items()}

    def disparities(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Scaled disparity ``[B, 1, H, W]`` per scale (finest first), in ``[1/max_depth, 1/min_depth]``."""
        dpt = self.depth.dpt
        patch = int(dpt.config.patch_size)
        h, w = images.shape[-2] // patch, images.shape[-1] // patch
        fused = dpt.neck(dpt.backbone(images).feature_maps, h, w)
        head = dpt.head
        lo, hi = 1.0 / self.max_depth, 1.0 / self.min_depth
        out = []
        for level in list(fused)[::-1][: self.scales]:
            x = F.interpolate(head.conv1(level), (h * patch, w * patch), mode="bilinear", align_corners=True)
            raw = head.conv3(head.activation1(head.conv2(x)))
            if raw.shape[-2:] != images.shape[-2:]:
                raw = F.interpolate(raw, images.shape[-2:], mode="bilinear", align_corners=False)
            out.append(lo + (hi - lo) * torch.sigmoid(raw))
        return out

    def forward(self, images: torch.Tensor, prompts: object = None) -> torch.Tensor:
        """The finest scaled disparity ``[B, 1, H, W]`` (larger = nearer)."""
        return self.disparities(images)[0]

    @property
    def device(self) -> torch.device:
        return self.depth.device
