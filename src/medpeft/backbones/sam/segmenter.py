"""SAM as a multi-class promptable segmenter: images + prompts -> logits [B, C, H, W]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SamModel

from medpeft.models.prompts import Prompts, point_and_box_tokens

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

    def sparse_tokens(self, prompts: Prompts, batch_size: int) -> torch.Tensor:
        """Prompt tokens [B, C, T, D] for every class."""
        pe = self.sam.prompt_encoder
        num_classes = prompts.num_classes() or self.num_classes
        class_ids = prompts.class_ids
        if class_ids is None:
            class_ids = torch.arange(num_classes, device=self.device).expand(batch_size, -1)
        tokens = point_and_box_tokens(prompts, pe._embed_points, pe._embed_boxes, pe.not_a_point_embed.weight)
        if self.class_prompt is not None:
            tokens.append(self.class_prompt(class_ids))
        if not tokens:
            if num_classes > 1:
                raise ValueError(
                    "no prompt given and no class prompt configured: with several classes the model "
                    "cannot tell them apart; set model.class_prompt or pass boxes/points"
                )
            dim = pe.hidden_size
            return torch.zeros(batch_size, num_classes, 0, dim, device=self.device)
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
            classes = sparse.shape[1]
            dense = self.sam.prompt_encoder.mask_embed(prompts.masks.flatten(0, 1)[:, None].to(self.dtype))
            rows = (
                [e.repeat_interleave(classes, 0) for e in embeddings]
                if isinstance(embeddings, list)
                else (embeddings.repeat_interleave(classes, 0))
            )
            low_res = self.decode(rows, sparse.flatten(0, 1)[:, None], dense)
            low_res = low_res.reshape(batch_size, classes, *low_res.shape[-2:])
        else:
            dense = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
            dense = dense.expand(batch_size, -1, *last.shape[-2:])
            low_res = self.decode(embeddings, sparse, dense)
        return F.interpolate(low_res, size=tuple(size), mode="bilinear", align_corners=False)

    @property
    def device(self) -> torch.device:
        return self.sam.shared_image_embedding.positional_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.sam.shared_image_embedding.positional_embedding.dtype
