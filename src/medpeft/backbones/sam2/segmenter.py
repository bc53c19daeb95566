"""SAM2 (transformers ``Sam2Model``, image mode) as the same multi-class promptable segmenter as SAM."""

from __future__ import annotations

import torch
from transformers import Sam2Model

from medpeft.backbones.sam.segmenter import SamSegmenter

_BLOCK = r"vision_encoder\.backbone\.blocks\.\d+\."
SAM2_TARGETS: dict[str, str] = {
    "qkv": _BLOCK + r"attn\.qkv",
    "attn_out": _BLOCK + r"attn\.proj",
    "attn": _BLOCK + r"attn\.(qkv|proj)",
    "mlp": _BLOCK + r"mlp\.(proj_in|proj_out)",
    "all": _BLOCK + r"(attn\.(qkv|proj)|mlp\.(proj_in|proj_out))",
    "blocks": r"vision_encoder\.backbone\.blocks\.(\d+)\..*",
    "pos_embed": r"vision_encoder\.backbone\.pos_embed(_window)?",
    "encoder_norms": r"vision_encoder\..*",
    "encoder": r"vision_encoder(\..*)?",
    "decoder": r"mask_decoder",
    "prompt_encoder": r"prompt_encoder",
    "neck": r"vision_encoder\.neck\.convs\.\d+",
}


class Sam2Segmenter(SamSegmenter):
    """SAM's prompt layout on SAM2: the Hiera FPN's two finer levels feed the mask decoder's
    high-resolution path, and the "no memory" token is added to the coarsest one, as SAM2 does for a
    single image. Decoding is the same in training and evaluation (no stability-based mask switching).
    """

    target_table = SAM2_TARGETS
    backbone_name = "sam2"

    def __init__(self, sam: Sam2Model, label_names: list[str], class_prompt: torch.nn.Module | None = None):
        super().__init__(sam, label_names, class_prompt)
        sam.mask_decoder.dynamic_multimask_via_stability = False

    @property
    def image_size(self) -> int:
        return int(self.sam.config.prompt_encoder_config.image_size)

    corner_labels = (2, 3, -1)  # SAM2 pads each box with a "not a point" token

    def point_tokens(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """SAM2's point embedding already adds the role of every label >= 0, corners included."""
        return self.sam.prompt_encoder._embed_points(coords, labels, pad=False)

    def image_embeddings(self, images: torch.Tensor) -> list[torch.Tensor]:
        """FPN levels [B, D, S/4, S/4], [B, D, S/8, S/8], [B, D, S/16, S/16] (the first two projected)."""
        maps = list(self.sam.get_image_features(images).fpn_hidden_states)  # each [h*w, B, D]
        maps[-1] = maps[-1] + self.sam.no_memory_embedding
        batch, size = images.shape[0], images.shape[-1]
        sides = [size // 4, size // 8, size // 16]
        return [m.permute(1, 2, 0).reshape(batch, -1, s, s) for m, s in zip(maps, sides, strict=True)]

    def decode(
        self, embeddings: list[torch.Tensor], sparse: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        image_pe = self.sam.get_image_wide_positional_embeddings().repeat(embeddings[-1].shape[0], 1, 1, 1)
        low_res, *_ = self.sam.mask_decoder(
            image_embeddings=embeddings[-1],
            image_positional_embeddings=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            high_resolution_features=embeddings[:-1],
        )
        return low_res[:, :, 0]
