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
    nothing about the liver); losses and scores skip the others. Landmark datasets give ``contours``
    (curves, read by :mod:`medpeft.data.landmarks`) or per-class ``masks`` with a ``line_width``.
    """

    image: Path
    masks: dict[str, Path] | None = None
    label_map: Path | None = None
    spacing: tuple[float, float] | None = None
    label_values: dict[str, int] | None = None
    extra_masks: dict[str, list[Path]] = field(default_factory=dict)
    annotated: tuple[str, ...] | None = None  # labels this image is annotated for; None: all of them
    contours: Path | None = None  # landmark curves: a colour drawing (P2ILF) or a contour XML
    line_width: int = 1  # curves (``contours``, or ``masks`` of a landmark layout) widened to this band
    colour_tolerance: float = 100.0  # RGB distance for colour-drawn contours (JPEG shifts colours)
    depth: Path | None = None  # a depth map of the same frame (``depth/<stem>``), for depth-guided models

    @property
    def stem(self) -> str:
        return self.image.stem
