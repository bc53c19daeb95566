"""SAM as a multi-class promptable segmenter: images + prompts -> logits [B, C, H, W]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SamModel

from medpeft.models.prompts import Prompts, per_class, prompt_points

_LAYER = r"vision_encoder\.layers\.\d+\."
# peft-style target table: symbolic name -> regex (full match, under any prefix) of SamModel names.
SAM_TARGETS: dict[str, str] = {
    "qkv": _LAYER + r"attn\.qkv",
    "attn_out": _LAYER + r"attn\.proj",
    "attn": _LAYER + r"attn\.(qkv|proj)",
    "mlp": _LAYER + r"mlp\.(lin1|lin2)",
    "all": _LAYER + r"(attn\.(qkv|proj)|mlp\.(lin1|lin2))",
    "blocks": r"vision_encoder\.layers\.(\d+)\..*",
    "pos_embed": r"vision_encoder\.pos_embed",
    "encoder_norms": r"vision_encoder\..*",
    "encoder": r"vision_encoder(\..*)?",
    "decoder": r"mask_decoder",
    "prompt_encoder": r"prompt_encoder",
    "neck": r"vision_encoder\.neck\.conv\d+",
}


class SamSegmenter(nn.Module):
    """Wraps ``transformers.SamModel``; each class is one of SAM's "point batch" entries.

    Sparse tokens per class are: point tokens, box corner tokens, then the class prompt token
    (learned embedding or text affine layer output), any of them optional. A class without a
    box (``box_valid`` False) gets SAM's "not a point" embedding in place of its corners, so a
    batch mixing present and absent classes keeps one token layout.
    """

    target_table = SAM_TARGETS

    def __init__(self, sam: SamModel, label_names: list[str], class_prompt: nn.Module | None = None):
        super().__init__()
        self.sam = sam
        self.label_names = list(label_names)
        self.class_prompt = class_prompt

    @property
    def transformers_model(self) -> nn.Module:
        """The wrapped transformers model: what ``medpeft merge`` saves with ``save_pretrained``."""
        return self.sam

    @property
    def image_size(self) -> int:
        return int(self.sam.config.vision_config.image_size)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Run the image encoder: [B, 3, S, S] -> [B, D, S/16, S/16]."""
        return self.sam.vision_encoder(images).last_hidden_state

    # labels of a box's corner tokens (``prompt_points``): SAM's two corner embeddings
    corner_labels: tuple[int, ...] = (2, 3)

    def point_tokens(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Labelled points ``[B, C, N, 2]`` / ``[B, C, N]`` (see ``prompt_points``) -> tokens ``[B, C, N, D]``."""
        pe = self.sam.prompt_encoder
        tokens = pe._embed_points(coords, labels, pad=False)  # positions; -1, 0 and 1 roles
        corner = pe.point_embed
        return (
            tokens + (labels == 2)[..., None] * corner[2].weight + (labels == 3)[..., None] * corner[3].weight
        )

    def sparse_tokens(self, prompts: Prompts, batch_size: int) -> torch.Tensor:
        """Prompt tokens [B, C, T, D] for every class."""
        class_ids = prompts.class_ids
        if class_ids is None:
            classes = prompts.num_classes() or self.num_classes
            class_ids = torch.arange(classes, device=self.device).expand(batch_size, -1)
        return self.prompt_tokens(prompt_points(prompts, self.corner_labels), class_ids)

    def prompt_tokens(
        self, points: tuple[torch.Tensor, torch.Tensor] | None, class_ids: torch.Tensor
    ) -> torch.Tensor:
        """Labelled points (or None) and the class token of each of ``class_ids`` [B, C] -> [B, C, T, D]."""
        tokens = [] if points is None else [self.point_tokens(*points)]
        if self.class_prompt is not None:
            tokens.append(self.class_prompt(class_ids))
        if not tokens:
            if class_ids.shape[1] > 1:
                raise ValueError(
                    "no prompt given and no class prompt configured: with several classes the model "
                    "cannot tell them apart; set model.class_prompt or pass boxes/points"
                )
            dim = self.sam.prompt_encoder.hidden_size
            return torch.zeros(*class_ids.shape, 0, dim, device=self.device)
        return torch.cat([t.to(self.dtype) for t in tokens], dim=2)

    def decode(self, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """The mask decoder, one mask per class: low-resolution logits [B, C, h, w]."""
        image_pe = self.sam.get_image_wide_positional_embeddings().repeat(embeddings.shape[0], 1, 1, 1)
        low_res, _ = self.sam.mask_decoder(
            image_embeddings=embeddings,
            image_positional_embeddings=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return low_res[:, :, 0]

    def forward(self, images: torch.Tensor, prompts: Prompts | None = None) -> torch.Tensor:
        """Segment ``images`` [B, 3, S, S]; returns per-class logits [B, C, S, S]."""
        return self.segment(self.image_embeddings(images), prompts, images.shape[-2:])

    def segment(
        self, embeddings: torch.Tensor | list[torch.Tensor], prompts: Prompts | None, size: tuple[int, int]
    ) -> torch.Tensor:
        """Decode image embeddings (possibly fused with other features) under ``prompts`` to logits at ``size``."""
        prompts = prompts or Prompts()
        last = embeddings[-1] if isinstance(embeddings, (list, tuple)) else embeddings
        batch_size = last.shape[0]
        sparse = self.sparse_tokens(prompts, batch_size)
        if prompts.masks is not None:  # a mask per class: decode each (image, class) as its own row
            return self.decode_rows(embeddings, sparse, self.mask_prompt(prompts.masks), size)
        dense = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = dense.expand(batch_size, -1, *last.shape[-2:])
        low_res = self.decode(embeddings, sparse, dense)
        return F.interpolate(low_res, size=tuple(size), mode="bilinear", align_corners=False)

    def mask_prompt(self, masks: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """SAM's dense prompt per (image, class) row from previous logits [B, C, S/4, S/4]; where
        ``present`` (a 0/1 scalar tensor, the exported decoder's ``has_mask_input``) is 0, "no mask"."""
        dense = self.sam.prompt_encoder.mask_embed(masks.flatten(0, 1)[:, None].to(self.dtype))
        if present is None:
            return dense
        none = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return present * dense + (1 - present) * none

    def decode_rows(
        self,
        embeddings: torch.Tensor | list[torch.Tensor],
        sparse: torch.Tensor,
        dense: torch.Tensor,
        size: tuple[int, int],
    ) -> torch.Tensor:
        """Decode each (image, class) as its own row (``dense`` per row): logits [B, C, *size]."""
        batch_size, classes = sparse.shape[:2]
        rows = (
            [per_class(e, classes) for e in embeddings]
            if isinstance(embeddings, (list, tuple))
            else per_class(embeddings, classes)
        )
        low_res = self.decode(rows, sparse.flatten(0, 1)[:, None], dense)
        low_res = low_res.reshape(batch_size, classes, *low_res.shape[-2:])
        return F.interpolate(low_res, size=tuple(size), mode="bilinear", align_corners=False)

    @property
    def device(self) -> torch.device:
        return self.sam.shared_image_embedding.positional_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.sam.shared_image_embedding.positional_embedding.dtype
