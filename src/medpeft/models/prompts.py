"""The prompt bundle passed to every segmenter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch


@dataclass
class Prompts:
    """Prompts for a batch of images, one prompt set per class.

    All coordinates are pixels in the model's input frame (``image_size x image_size``).
    Every field is optional; ``class_ids`` alone is the automatic (prompt-free) mode. For volumes
    (3D segmenters) boxes are ``[B, C, 6]`` as (z0, y0, x0, z1, y1, x1) and points ``[B, C, N, 3]`` as
    (z, y, x), voxels of the model input; the class token is used only when ``text``.
    """

    boxes: torch.Tensor | None = None  # [B, C, 4] as (x1, y1, x2, y2)
    box_valid: torch.Tensor | None = None  # [B, C] bool; False -> "no box" tokens
    points: torch.Tensor | None = None  # [B, C, N, 2] as (x, y)
    point_labels: torch.Tensor | None = None  # [B, C, N]: 1 positive, 0 negative, -1 not a point
    class_ids: torch.Tensor | None = None  # [B, C] label indices
    text: bool = True  # whether the class (label-name) token is a prompt; 2D segmenters always use it
    masks: torch.Tensor | None = None  # [B, C, S/4, S/4] previous logits per class (SAM's mask input)

    def to(self, device: torch.device | str) -> Prompts:
        """Move every tensor to ``device``."""
        moved = {f.name: _move(getattr(self, f.name), device) for f in fields(self) if f.name != "text"}
        return Prompts(**moved, text=self.text)

    def num_classes(self) -> int | None:
        """C as implied by whichever field is set."""
        for t in (self.class_ids, self.box_valid, self.boxes, self.point_labels):
            if t is not None:
                return int(t.shape[1])
        return None

    @classmethod
    def from_batch(cls, batch: dict, mode: str) -> Prompts:
        """Select the prompts of one mode from a data batch: ``box``, ``point``, ``box+point``, ``auto`` (the
        class token alone), or for volumes also ``text`` (= auto) and ``text+box``, ``text+point``,
        ``text+box+point`` (text with others; without ``text`` a 3D model gets no class token)."""
        if mode not in PROMPT_MODES + VOLUME_PROMPT_MODES:
            raise ValueError(
                f"unknown prompt mode {mode!r}; expected one of {PROMPT_MODES + VOLUME_PROMPT_MODES}"
            )
        use_box = "box" in mode
        use_point = "point" in mode
        return cls(
            boxes=batch["boxes"] if use_box else None,
            box_valid=batch["box_valid"] if use_box else None,
            points=batch["points"] if use_point else None,
            point_labels=batch["point_labels"] if use_point else None,
            class_ids=batch["class_ids"],
            text=mode == "auto" or "text" in mode,
        )


PROMPT_MODES = ("box", "point", "box+point", "auto")
VOLUME_PROMPT_MODES = ("text", "text+box", "text+point", "text+box+point")


def _move(t: torch.Tensor | None, device: torch.device | str) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def point_and_box_tokens(
    prompts: Prompts,
    embed_points: Callable[..., torch.Tensor],
    embed_boxes: Callable[[torch.Tensor], torch.Tensor],
    not_a_point: torch.Tensor,
) -> list[torch.Tensor]:
    """The point tokens (positive when unlabelled; SAM's padding token when there is no box) and box
    corner tokens (``not_a_point`` for a class without a box, so a batch keeps one layout) of every
    class, by the segmenter's own prompt-encoder functions: SAM's, SAM2's and SegVol's alike."""
    tokens: list[torch.Tensor] = []
    if prompts.points is not None:
        labels = prompts.point_labels
        if labels is None:
            labels = torch.ones(prompts.points.shape[:-1], dtype=torch.long, device=prompts.points.device)
        tokens.append(embed_points(prompts.points.float(), labels, pad=prompts.boxes is None))
    if prompts.boxes is not None:
        corners = embed_boxes(prompts.boxes.float())
        if prompts.box_valid is not None:
            corners = torch.where(~prompts.box_valid.bool()[..., None, None], not_a_point, corners)
        tokens.append(corners)
    return tokens
