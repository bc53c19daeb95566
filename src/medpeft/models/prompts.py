"""The prompt bundle passed to every segmenter."""

from __future__ import annotations

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


def prompt_points(
    prompts: Prompts, corner_labels: tuple[int, ...] = (2, 3)
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Every point-like prompt token of every class as labelled points: coordinates ``[B, C, N, d]`` and
    labels ``[B, C, N]`` (1 positive, 0 negative, -1 "not a point", 2 and 3 a box's corners), or None.

    SAM encodes a box as its two corners with their own embeddings, so one labelled point set is the
    whole sparse prompt: the PyTorch segmenters and the exported ONNX decoder both take this form.
    Points come first (unlabelled ones positive), padded with one "not a point" when there is no box,
    as SAM does; then each box's corners labelled ``corner_labels`` (SAM2 adds a third, -1), all -1 for a
    class without a box (``box_valid`` False), so a batch keeps one layout.
    """
    coords: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    if prompts.points is not None:
        points = prompts.points.float()
        lab = prompts.point_labels
        coords.append(points)
        labels.append(
            torch.ones(points.shape[:-1], dtype=torch.long, device=points.device)
            if lab is None
            else lab.long()
        )
        if prompts.boxes is None:
            coords.append(points.new_zeros(*points.shape[:-2], 1, points.shape[-1]))
            labels.append(labels[0].new_full((*points.shape[:-2], 1), -1))
    if prompts.boxes is not None:
        boxes = prompts.boxes.float()
        corners = boxes.reshape(*boxes.shape[:-1], 2, boxes.shape[-1] // 2)
        extra = len(corner_labels) - 2
        coords.append(
            torch.cat([corners, corners.new_zeros(*corners.shape[:-2], extra, corners.shape[-1])], -2)
        )
        lab = torch.tensor(corner_labels, device=boxes.device).expand(*boxes.shape[:-1], -1)
        if prompts.box_valid is not None:
            lab = torch.where(prompts.box_valid.bool()[..., None], lab, -1)
        labels.append(lab)
    if not coords:
        return None
    return torch.cat(coords, -2), torch.cat(labels, -1)


def per_class(embedding: torch.Tensor, classes: int) -> torch.Tensor:
    """Each image's embedding repeated per class, ``[B, ...] -> [B * C, ...]``, for decoding every (image,
    class) as its own row (``repeat_interleave``'s ONNX export breaks with a dynamic batch)."""
    return embedding[:, None].expand(-1, classes, *embedding.shape[1:]).flatten(0, 1)
