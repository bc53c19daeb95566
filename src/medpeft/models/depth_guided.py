"""Depth-guided promptable segmentation: an RGB segmenter's image embedding fused with depth features
by cross-attention, then decoded by the segmenter's own (promptable) mask decoder.

The depth source is Depth Anything's DINOv2 encoder (its last feature map, CLS removed; frozen or
adapted like any backbone), a depth map per image through a small convolutional stem, or none (the
RGB-only ablation). Depth Anything sees the image resized to its patch grid (a multiple of 14).
The decoder is the segmenter's promptable mask decoder on the fused embedding, or a light FPN decoder
(automatic only); outputs are per-class sigmoid logits or softmax ones (:func:`softmax_logits`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from medpeft.models.fpn_decoder import FPNDecoder, softmax_logits
from medpeft.models.fusion import CrossAttentionFusion, DepthStem, Direction, tokens_to_grid
from medpeft.models.prompts import Prompts

DepthSource = Literal["depth_anything", "file", "none"]
Decoder = Literal["mask_decoder", "fpn"]
Output = Literal["sigmoid", "softmax"]


class DepthGuidedSegmenter(nn.Module):
    """``rgb``: a SAM or SAM2 segmenter (``image_embeddings``, ``sparse_tokens``, ``decode``);
    ``depth``: a Depth Anything model (source ``depth_anything``) or None. Calls take
    ``depth_maps [B, 1, H, W]`` when the source is ``file``."""

    def __init__(
        self,
        rgb: nn.Module,
        depth: nn.Module | None,
        source: DepthSource = "depth_anything",
        direction: Direction = "depth_queries_rgb",
        heads: int = 2,
        residual: bool = True,
        width: int | None = None,
        decoder: Decoder = "mask_decoder",
        output: Output = "sigmoid",
    ) -> None:
        super().__init__()
        if (source == "depth_anything") != (depth is not None):
            raise ValueError(
                f"depth source {source!r} {'needs' if depth is None else 'takes no'} depth model"
            )
        if decoder not in ("mask_decoder", "fpn") or output not in ("sigmoid", "softmax"):
            raise ValueError(f"unknown decoder {decoder!r} or output {output!r}")
        self.rgb, self.depth, self.source, self.output = rgb, depth, source, output
        embed = int(rgb.sam.config.prompt_encoder_config.hidden_size)  # the mask decoder's embedding width
        width = width or embed
        self.stem = DepthStem(width) if source == "file" else None
        depth_channels = int(depth.dpt.config.backbone_config.hidden_size) if depth is not None else width
        self.fusion = (
            CrossAttentionFusion(embed, depth_channels, width, heads, direction, residual, embed)
            if source != "none"
            else None
        )
        self.decoder = None
        if decoder == "fpn":
            probe = torch.zeros(1, 3, self.image_size, self.image_size, device=rgb.device, dtype=rgb.dtype)
            with torch.no_grad():
                levels = rgb.image_embeddings(probe)
            levels = levels if isinstance(levels, (list, tuple)) else [levels]
            self.decoder = FPNDecoder([int(x.shape[1]) for x in levels], len(rgb.label_names))

    part_prefixes = {  # parts of the model for parameter reports (medpeft info)
        "depth.": "depth_model",
        "stem.": "depth_stem",
        "fusion.": "fusion",
        "decoder.": "fpn_decoder",
    }

    @property
    def label_names(self) -> list[str]:
        return self.rgb.label_names

    @property
    def image_size(self) -> int:
        return self.rgb.image_size

    @property
    def target_table(self) -> dict[str, str]:
        """Methods in ``adapters`` target the RGB encoder (the depth model's own table adapts it)."""
        return {k: r"rgb\.(?:.*\.)?" + v for k, v in self.rgb.target_table.items()}

    def depth_features(self, images: torch.Tensor, depth_maps: torch.Tensor | None) -> torch.Tensor:
        """``[B, C, h, w]`` depth features of the batch from the configured source."""
        if self.source == "file":
            if depth_maps is None:
                raise ValueError("depth source 'file' needs depth_maps [B, 1, H, W] with the images")
            return self.stem(depth_maps)
        x = self._depth_anything_input(images)
        side = x.shape[-1] // int(self.depth.dpt.config.patch_size)
        return tokens_to_grid(self.depth.dpt.backbone(x).feature_maps[-1], side, side)

    def _depth_anything_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images resized to Depth Anything's patch grid (a multiple of its patch size)."""
        patch = int(self.depth.dpt.config.patch_size)
        side = max(patch, images.shape[-1] // patch * patch)
        return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)

    def forward(
        self, images: torch.Tensor, prompts: Prompts | None = None, depth_maps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-class logits ``[B, C, H, W]`` (``prompts`` are ignored by the ``fpn`` decoder)."""
        embeddings = self.rgb.image_embeddings(images)
        levels = list(embeddings) if isinstance(embeddings, (list, tuple)) else [embeddings]
        if self.fusion is not None:
            levels[-1] = self.fusion(levels[-1], self.depth_features(images, depth_maps))
        if self.decoder is not None:
            scores = self.decoder(levels, images.shape[-2:])
        else:
            fused = levels if isinstance(embeddings, (list, tuple)) else levels[0]
            scores = self.rgb.segment(fused, prompts, images.shape[-2:])
        return softmax_logits(scores) if self.output == "softmax" else scores

    @torch.no_grad()
    def depth_picture_source(
        self, images: torch.Tensor, depth_maps: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The depth the model used, as depth ``[B, 1, H, W]`` (larger = farther; 0 = unknown) for
        pictures: the file's map, Depth Anything's own prediction (disparity inverted for relative
        models), or None without a depth source."""
        if self.source == "file":
            return depth_maps
        if self.source == "none":
            return None
        out = self.depth(self._depth_anything_input(images))
        out = F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)
        if self.depth.kind == "relative":
            out = torch.where(out > 0, 1.0 / out.clamp_min(1e-6), torch.zeros_like(out))
        return out

    @property
    def device(self) -> torch.device:
        return self.rgb.device
