"""Label names as prompts: one prompt token per class, from frozen CLIP text embeddings or learned.

The segmenter appends the ``[B, C, 1, dim]`` tokens to SAM's sparse prompt tokens (as S-SAM does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn


class TextEncoder:
    """Frozen CLIP text model + tokenizer (hub id or local dir); deliberately not an ``nn.Module``.

    ``encode`` returns the projected ``text_embeds`` (``projection=True``, CLIP's joint space) or the
    pooled EOS state. ``template`` is formatted with the name, underscores replaced by spaces. ``weights``
    (CLIPTextModel keys) replace the loaded ones: the folder then gives the tokenizer and config.
    """

    def __init__(
        self,
        name_or_path: str = "openai/clip-vit-base-patch32",
        template: str = "{}",
        projection: bool = True,
        device: str | torch.device = "cpu",
        weights: Mapping[str, Tensor] | None = None,
    ) -> None:
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

        if "{}" not in template:
            raise ValueError(f"text template {template!r} has no '{{}}' placeholder for the label name")
        self.template, self.projection = template, projection
        cls = CLIPTextModelWithProjection if projection else CLIPTextModel
        try:
            model, info = cls.from_pretrained(name_or_path, output_loading_info=True)
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RuntimeError(f"cannot load CLIP text model {name_or_path!r}: {reason}") from None
        if weights is not None:  # e.g. a released SegVol checkpoint's own CLIP text tower
            try:
                model.load_state_dict(dict(weights), strict=True)
            except RuntimeError as err:
                raise RuntimeError(
                    f"CLIP text weights do not fit {name_or_path!r}: {str(err).splitlines()[1]}"
                ) from None
            info = {}
        if info.get("missing_keys"):
            missing = sorted(info["missing_keys"])
            raise RuntimeError(
                f"CLIP text model {name_or_path!r} lacks weights {missing} (projection={projection})"
            )
        self.model = model.to(device).eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        """Width of the returned embeddings."""
        config = self.model.config
        return config.projection_dim if self.projection else config.hidden_size

    @torch.no_grad()
    def encode(self, names: Sequence[str]) -> Tensor:
        """``[N, dim]`` float32 embeddings of ``template.format(name)`` for each name."""
        texts = [self.template.format(name.replace("_", " ")) for name in names]
        device = next(self.model.parameters()).device
        limit = self.model.config.max_position_embeddings
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        tokens = tokens.to(device)
        out = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return (out.text_embeds if self.projection else out.pooler_output).float()


class _ClassPrompt(nn.Module):
    """Label bookkeeping and the ``[B, C] -> [B, C, 1, dim]`` lookup shared by the class prompts."""

    def __init__(self, label_names: Sequence[str], dim: int) -> None:
        super().__init__()
        names = list(label_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"label names must be non-empty and unique, got {names}")
        self.label_names, self.dim = names, dim
        self._index = {name: i for i, name in enumerate(names)}

    def label_index(self, name: str) -> int:
        """Index of a label name; ``KeyError`` listing the valid names otherwise."""
        if name not in self._index:
            raise KeyError(f"unknown label {name!r}; expected one of: {', '.join(self.label_names)}")
        return self._index[name]

    def class_ids(self, names: Sequence[str]) -> Tensor:
        """``LongTensor [len(names)]`` of label indices."""
        return torch.tensor([self.label_index(n) for n in names], dtype=torch.long)

    def table(self) -> Tensor:
        """``[num_labels, dim]`` prompt token of every label."""
        raise NotImplementedError

    def forward(self, class_ids: Tensor) -> Tensor:
        """``class_ids [B, C]`` -> one prompt token per class, ``[B, C, 1, dim]``."""
        if class_ids.dim() != 2:
            raise ValueError(f"class_ids must be [B, C], got shape {tuple(class_ids.shape)}")
        return self.table()[class_ids].unsqueeze(2)


class LearnedClassPrompt(_ClassPrompt):
    """A learned ``nn.Embedding(num_labels, dim)`` token per label (no text model)."""

    def __init__(self, label_names: Sequence[str], dim: int) -> None:
        super().__init__(label_names, dim)
        self.embedding = nn.Embedding(len(self.label_names), dim)

    def table(self) -> Tensor:
        return self.embedding.weight


class TextClassPrompt(_ClassPrompt):
    """Frozen text embeddings of the label names through a learnable ``nn.Linear(text_dim, dim)``.

    The embeddings are computed once here and kept as a non-persistent buffer, so the state dict holds
    only the affine layer. Without a text encoder it falls back to a learned embedding per label.
    """

    def __init__(self, label_names: Sequence[str], text_encoder: TextEncoder | None, dim: int) -> None:
        super().__init__(label_names, dim)
        self.affine: nn.Linear | None = None
        self.embedding: nn.Embedding | None = None
        if text_encoder is None:
            self.embedding = nn.Embedding(len(self.label_names), dim)
            return
        embeds = text_encoder.encode(self.label_names).cpu()
        self.register_buffer("text_embeds", embeds, persistent=False)
        self.affine = nn.Linear(embeds.shape[1], dim)

    def table(self) -> Tensor:
        if self.affine is None:
            assert self.embedding is not None
            return self.embedding.weight
        return self.affine(self.text_embeds)


def build_class_prompt(
    label_names: Sequence[str], dim: int, text_encoder: TextEncoder | None = None
) -> TextClassPrompt | LearnedClassPrompt:
    """``TextClassPrompt`` when a text encoder is given, else ``LearnedClassPrompt``."""
    if text_encoder is None:
        return LearnedClassPrompt(label_names, dim)
    return TextClassPrompt(label_names, text_encoder, dim)
