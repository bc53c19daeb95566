"""SegVol as a multi-class promptable 3D segmenter: volumes + prompts -> logits [B, C, D, H, W]."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medpeft.models.prompts import Prompts, per_class, prompt_points

from .model import SegVolModel

_BLOCK = r"image_encoder\.blocks\.\d+\."
# peft-style target table over SegVolModel names (MONAI ViT: fused qkv, out_proj, mlp.linear1/2).
SEGVOL_TARGETS: dict[str, str] = {
    "qkv": _BLOCK + r"attn\.qkv",
    "attn_out": _BLOCK + r"attn\.out_proj",
    "attn": _BLOCK + r"attn\.(qkv|out_proj)",
    "mlp": _BLOCK + r"mlp\.linear[12]",
    "all": _BLOCK + r"(attn\.(qkv|out_proj)|mlp\.linear[12])",
    "blocks": r"image_encoder\.blocks\.(\d+)\..*",
    "pos_embed": r"image_encoder\.patch_embedding\.position_embeddings",
    "patch_embed": r"image_encoder\.patch_embedding\.patch_embeddings",
    "encoder_norms": r"image_encoder\..*",
    "encoder": r"image_encoder(\..*)?",
    "decoder": r"mask_decoder",
    "prompt_encoder": r"prompt_encoder",
}


class SegVolSegmenter(nn.Module):
    """Wraps :class:`SegVolModel`; each class is decoded as its own row (image x class).

    Sparse tokens per class: points, box corners, then the class token (the label name through the
    frozen CLIP text model and a trainable projection, or a learned token) when ``prompts.text``; the
    class token also drives the decoder's text-similarity map. A class without a box (``box_valid``
    False) gets "not a point" corners, so one batch keeps one token layout.
    """

    target_table = SEGVOL_TARGETS
    backbone_name = "segvol"
    spatial_dims = 3

    def __init__(self, base: SegVolModel, label_names: list[str], class_prompt: nn.Module | None = None):
        super().__init__()
        self.segvol = base
        self.label_names = list(label_names)
        self.class_prompt = class_prompt

    @property
    def roi(self) -> tuple[int, int, int]:
        """The model input size (D, H, W)."""
        return self.segvol.config.roi

    @property
    def image_size(self) -> int:
        return int(self.roi[-1])

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    corner_labels: tuple[int, ...] = (2, 3)

    def point_tokens(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Labelled points ``[B, C, N, 3]`` / ``[B, C, N]`` (see ``prompt_points``) -> tokens ``[B, C, N, w]``."""
        pe = self.segvol.prompt_encoder
        tokens = pe.embed_points(coords, labels, pad=False)
        roles = pe.point_embeddings
        return (
            tokens + (labels == 2)[..., None] * roles[2].weight + (labels == 3)[..., None] * roles[3].weight
        )

    def sparse_tokens(self, prompts: Prompts, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt tokens ``[B, C, T, w]`` and text tokens ``[B, C, w]`` (None without text)."""
        class_ids = prompts.class_ids
        if class_ids is None:
            classes = prompts.num_classes() or self.num_classes
            class_ids = torch.arange(classes, device=self.device).expand(batch, -1)
        return self.prompt_tokens(prompt_points(prompts, self.corner_labels), class_ids, prompts.text)

    def prompt_tokens(
        self, points: tuple[torch.Tensor, torch.Tensor] | None, class_ids: torch.Tensor, text: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Labelled points (or None) and, with ``text``, the class token of each of ``class_ids`` [B, C]."""
        tokens = [] if points is None else [self.point_tokens(*points)]
        class_tokens = None
        if text and self.class_prompt is not None:
            class_tokens = self.class_prompt(class_ids)[:, :, 0]  # [B, C, w]
            tokens.append(class_tokens[:, :, None])
        if not tokens:
            raise ValueError(
                "no prompt: give boxes or points, or text (label names) with a class prompt configured"
            )
        return torch.cat(tokens, 2), class_tokens

    def forward(self, volumes: torch.Tensor, prompts: Prompts | None = None) -> torch.Tensor:
        """Segment ``volumes`` ``[B, C_in, *roi]``; per-class logits ``[B, C, *roi]``."""
        return self.segment(self.segvol.embed(volumes), prompts, tuple(volumes.shape[2:]))

    def image_embeddings(self, volumes: torch.Tensor) -> torch.Tensor:
        """The image encoder: ``[B, C_in, *roi]`` -> ``[B, w, *grid]``."""
        return self.segvol.embed(volumes)

    def segment(
        self, embedding: torch.Tensor, prompts: Prompts | None, size: tuple[int, ...]
    ) -> torch.Tensor:
        """Decode an image embedding ``[B, w, *grid]`` under ``prompts`` to logits at ``size``."""
        prompts = prompts or Prompts()
        sparse, text = self.sparse_tokens(prompts, embedding.shape[0])
        return self.decode_tokens(embedding, sparse, text, size)

    def decode_tokens(
        self, embedding: torch.Tensor, sparse: torch.Tensor, text: torch.Tensor | None, size: tuple[int, ...]
    ) -> torch.Tensor:
        """The mask decoder on prompt tokens ``[B, C, T, w]`` (and text tokens ``[B, C, w]``), one row per
        (image, class): logits ``[B, C, *size]``."""
        b, c = sparse.shape[:2]
        pe = self.segvol.prompt_encoder
        image = per_class(embedding, c)
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1, 1)
        image_pe = pe.pe_layer.grid(tuple(embedding.shape[2:]))[None]
        rows = text.reshape(b * c, -1) if text is not None else None
        low = self.segvol.mask_decoder(image, image_pe, sparse.flatten(0, 1), dense, rows)
        low = low.reshape(b, c, *low.shape[1:])
        return F.interpolate(low, size=tuple(size), mode="trilinear", align_corners=False)

    def save_base(self, directory: Path) -> Path:
        """Write the (merged) base as a folder ``model.base`` loads (``medpeft merge``)."""
        from . import save_segvol

        return save_segvol(self.segvol, directory)

    @property
    def device(self) -> torch.device:
        return self.segvol.prompt_encoder.no_mask_embed.weight.device
