"""SegVol (Du et al. 2023): a 3D ViT image encoder, a 3D prompt encoder (points, boxes) and a SAM-style mask
decoder whose masks also get a text-similarity map, for volumes ``[B, 1, D, H, W]``.

MONAI provides the encoder (``ViT``, ``proj_type="conv"``: a ``Conv3d`` patch embedding) and
transformers the two-way transformer and MLP heads (``SamTwoWayTransformer``, ``SamFeedForward``, which
flatten any number of spatial axes). Written here: what is 3D-specific and neither library has, the
random-Fourier positional encoding of 3D coordinates and the transposed-``Conv3d`` upscaling.

Coordinates are voxels of the model input in array order: points ``(z, y, x)`` = ``(d0, d1, d2)``, boxes
``(z0, y0, x0, z1, y1, x1)``. Internally the encoding orders its features ``(d1, d0, d2)`` as the
release does (its SAM heritage: ``(x, y)`` then depth), so released weights see what they were trained on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import ViT
from torch import nn
from transformers import SamMaskDecoderConfig
from transformers.models.sam.modeling_sam import SamFeedForward, SamTwoWayTransformer

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class SegVolConfig:
    """Sizes of one SegVol; the published model is ``SegVolConfig()`` (input 32x256x256, patch 4x16x16,
    width 768, 12 blocks; decoder as SAM's with a 768-wide two-way transformer)."""

    roi: Triple = (32, 256, 256)
    patch: Triple = (4, 16, 16)
    in_channels: int = 1
    width: int = 768
    mlp_dim: int = 3072
    layers: int = 12
    heads: int = 12
    decoder_layers: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_hidden: int = 256
    multimask: int = 3

    def __post_init__(self) -> None:
        for r, p in zip(self.roi, self.patch, strict=True):
            if r % p:
                raise ValueError(f"SegVol input {self.roi} is not a multiple of the patch {self.patch}")
        if self.width % self.heads or self.width % 8:
            raise ValueError(f"SegVol width {self.width} must divide by its {self.heads} heads and by 8")

    @property
    def grid(self) -> Triple:
        """Patch tokens per axis."""
        return tuple(r // p for r, p in zip(self.roi, self.patch, strict=True))  # type: ignore[return-value]

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SegVolConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"SegVol config: unknown fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class PositionEncoding3D(nn.Module):
    """Random Fourier features of normalised 3D positions: ``sin, cos(2 pi (2c - 1) G)``, ``G`` a fixed
    ``[3, width / 2]`` Gaussian matrix (SAM's encoding with a third axis)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, width // 2))

    def encode(self, unit: torch.Tensor) -> torch.Tensor:
        """``[..., 3]`` positions in [0, 1] (feature order d1, d0, d2) -> ``[..., width]``."""
        proj = (2 * unit - 1) @ self.positional_encoding_gaussian_matrix * (2 * math.pi)
        return torch.cat([proj.sin(), proj.cos()], -1)

    def grid(self, size: Triple) -> torch.Tensor:
        """``[width, s0, s1, s2]``: the encoding of every token centre."""
        axes = [(torch.arange(n, dtype=torch.float32, device=self._device) + 0.5) / n for n in size]
        d0, d1, d2 = torch.meshgrid(*axes, indexing="ij")
        return self.encode(torch.stack([d1, d0, d2], -1)).permute(3, 0, 1, 2)

    def points(self, coords: torch.Tensor, roi: Triple) -> torch.Tensor:
        """``[..., 3]`` voxel ``(d0, d1, d2)`` -> ``[..., width]`` (positions at voxel centres)."""
        scale = torch.tensor(roi, dtype=torch.float32, device=coords.device)
        unit = (coords.float() + 0.5) / scale
        return self.encode(unit[..., [1, 0, 2]])

    @property
    def _device(self) -> torch.device:
        return self.positional_encoding_gaussian_matrix.device


class PromptEncoder3D(nn.Module):
    """Point and box tokens: the position encoding plus a learned embedding per role (negative point,
    positive point, first corner, second corner); ``not_a_point_embed`` pads and marks absent prompts;
    ``no_mask_embed`` is the dense embedding (SegVol takes no mask prompts)."""

    def __init__(self, config: SegVolConfig) -> None:
        super().__init__()
        self.roi = config.roi
        self.pe_layer = PositionEncoding3D(config.width)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, config.width) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, config.width)
        self.no_mask_embed = nn.Embedding(1, config.width)

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """``[..., N, 3]`` points with labels ``[..., N]`` (1 positive, 0 negative, -1 none) -> tokens
        ``[..., N (+1 padding), width]``."""
        if pad:
            points = torch.cat([points, points.new_zeros(*points.shape[:-2], 1, 3)], -2)
            labels = torch.cat([labels, labels.new_full((*labels.shape[:-1], 1), -1)], -1)
        tokens = self.pe_layer.points(points, self.roi)
        lab = labels[..., None]
        tokens = torch.where(lab == -1, self.not_a_point_embed.weight, tokens)
        tokens = tokens + (lab == 0) * self.point_embeddings[0].weight
        return tokens + (lab == 1) * self.point_embeddings[1].weight

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``[..., 6]`` boxes -> two corner tokens ``[..., 2, width]``."""
        corners = self.pe_layer.points(boxes.reshape(*boxes.shape[:-1], 2, 3), self.roi)
        roles = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        return corners + roles


class MaskDecoder3D(nn.Module):
    """SAM's mask decoder in 3D: the two-way transformer over prompt tokens and image tokens, two
    transposed ``Conv3d`` (x4), hypernetwork MLPs, plus (with a text token) the similarity of each
    upscaled voxel embedding to the projected text token, added to the mask logits as in SegVol."""

    def __init__(self, config: SegVolConfig) -> None:
        super().__init__()
        w = config.width
        self.num_mask_tokens = config.multimask + 1
        self.iou_token = nn.Embedding(1, w)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, w)
        decoder = SamMaskDecoderConfig(
            hidden_size=w,
            num_hidden_layers=config.decoder_layers,
            num_attention_heads=config.decoder_heads,
            mlp_dim=config.decoder_mlp_dim,
            layer_norm_eps=1e-5,
        )
        decoder._attn_implementation = "sdpa"  # standalone use: no from_pretrained to dispatch it
        self.transformer = SamTwoWayTransformer(decoder)
        up = tuple(2 * g for g in config.grid)
        self.upscale_conv1 = nn.ConvTranspose3d(w, w // 4, kernel_size=2, stride=2)
        self.upscale_layer_norm = nn.LayerNorm((w // 4, *up))
        self.upscale_conv2 = nn.ConvTranspose3d(w // 4, w // 8, kernel_size=2, stride=2)
        self.output_hypernetworks_mlps = nn.ModuleList(
            SamFeedForward(w, w, w // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = SamFeedForward(w, config.iou_hidden, self.num_mask_tokens, 3)
        self.txt_align_upscaled_embedding = nn.Linear(w, w // 8)

    def forward(
        self,
        image: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        text: torch.Tensor | None,
    ) -> torch.Tensor:
        """``image`` [N, w, g0, g1, g2] (one row per image x class), ``sparse`` [N, T, w], ``text``
        [N, w] (the class token) or None -> logits of the first mask token [N, 4 g0, 4 g1, 4 g2]."""
        n = sparse.shape[0]
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight]).expand(n, -1, -1)
        tokens = torch.cat([tokens, sparse], 1)[:, None]  # [N, 1, T', w]
        src = image + dense
        queries, keys = self.transformer(
            point_embeddings=tokens,
            image_embeddings=src,
            image_positional_embeddings=image_pe.expand(n, -1, -1, -1, -1),
            attention_similarity=None,
        )
        keys = keys[:, 0].transpose(1, 2).reshape(src.shape)
        up = F.gelu(self.upscale_layer_norm(self.upscale_conv1(keys)))
        up = F.gelu(self.upscale_conv2(up))  # [N, w/8, 4 g0, 4 g1, 4 g2]
        hyper = self.output_hypernetworks_mlps[0](queries[:, 0, 1])  # the single-mask token
        masks = torch.einsum("nc,nczyx->nzyx", hyper, up)
        if text is not None:
            masks = masks + torch.einsum("nc,nczyx->nzyx", self.txt_align_upscaled_embedding(text), up)
        return masks


class SegVolModel(nn.Module):
    """The base model (what ``model.base`` loads): encoder, prompt encoder, mask decoder, its config."""

    def __init__(self, config: SegVolConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ViT(
            in_channels=config.in_channels,
            img_size=config.roi,
            patch_size=config.patch,
            hidden_size=config.width,
            mlp_dim=config.mlp_dim,
            num_layers=config.layers,
            num_heads=config.heads,
            proj_type="conv",
            classification=False,
            spatial_dims=3,
        )
        self.prompt_encoder = PromptEncoder3D(config)
        self.mask_decoder = MaskDecoder3D(config)

    def embed(self, volumes: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, *roi]`` -> image embedding ``[B, width, *grid]``."""
        tokens, _ = self.image_encoder(volumes)
        return tokens.transpose(1, 2).reshape(volumes.shape[0], -1, *self.config.grid)
