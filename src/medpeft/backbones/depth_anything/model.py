"""Depth Anything (transformers ``DepthAnythingForDepthEstimation``) as a depth model: images -> [B, 1, H, W]."""

from __future__ import annotations

import torch
from torch import nn
from transformers import DepthAnythingForDepthEstimation

_LAYER = r"backbone\.encoder\.layer\.\d+\."
DEPTH_ANYTHING_TARGETS: dict[str, str] = {
    "qkv": _LAYER + r"attention\.(q_proj|k_proj|v_proj)",
    "q": _LAYER + r"attention\.q_proj",
    "v": _LAYER + r"attention\.v_proj",
    "qv": _LAYER + r"attention\.(q_proj|v_proj)",
    "attn_out": _LAYER + r"attention\.o_proj",
    "attn": _LAYER + r"attention\.(q_proj|k_proj|v_proj|o_proj)",
    "mlp": _LAYER + r"mlp\.(fc1|fc2)",
    "all": _LAYER + r"(attention\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(fc1|fc2))",
    "blocks": r"backbone\.encoder\.layer\.(\d+)\..*",
    "pos_embed": r"backbone\.embeddings\.position_embeddings",
    "encoder_norms": r"backbone\..*",
    "encoder": r"backbone(\..*)?",
    "decoder": r"(neck|head)",
}


class DepthEstimator(nn.Module):
    """Relative models predict affine-invariant disparity (ReLU head); metric ones depth in metres
    (sigmoid x ``max_depth``). ``kind`` tells the task which loss and evaluation apply."""

    target_table = DEPTH_ANYTHING_TARGETS
    backbone_name = "depth_anything"

    def __init__(
        self, dpt: DepthAnythingForDepthEstimation, label_names: list[str] | None = None, class_prompt=None
    ):
        super().__init__()
        if class_prompt is not None:
            raise ValueError("depth models take no class prompt (set model.class_prompt: none)")
        self.dpt = dpt

    @property
    def transformers_model(self) -> nn.Module:
        """The wrapped transformers model: what ``medpeft merge`` saves with ``save_pretrained``."""
        return self.dpt

    @property
    def kind(self) -> str:
        return str(self.dpt.config.depth_estimation_type)

    @property
    def max_depth(self) -> float:
        return float(self.dpt.config.max_depth)

    def forward(self, images: torch.Tensor, prompts: object = None) -> torch.Tensor:
        """Disparity (relative) or depth (metric) [B, 1, H, W] at the input size."""
        out = self.dpt(pixel_values=images).predicted_depth[:, None]
        if out.shape[-2:] != images.shape[-2:]:
            out = nn.functional.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return out

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
