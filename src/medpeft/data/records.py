"""The record of one 2D image and its annotation, as every dataset layout produces it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ImageRecord:
    """One 2D image and its annotation.

    Either ``masks`` (label -> binary mask file) or ``label_map`` (one integer mask whose values are
    given by ``label_values``; default: label i of the list is value i + 1) is set. ``extra_masks``
    holds further instance masks of a label, merged with ``masks[label]``. ``spacing`` is the pixel
    size (row, col) in mm when known. ``annotated`` names the labels the image was annotated for
    when it comes from a collection whose members label different structures (a polyp image says
    nothing about the liver); losses and scores skip the others.
    """

    image: Path
    masks: dict[str, Path] | None = None
    label_map: Path | None = None
    spacing: tuple[float, float] | None = None
    label_values: dict[str, int] | None = None
    extra_masks: dict[str, list[Path]] = field(default_factory=dict)
    annotated: tuple[str, ...] | None = None  # labels this image is annotated for; None: all of them

    @property
    def stem(self) -> str:
        return self.image.stem
