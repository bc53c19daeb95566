"""Anatomical landmarks as thin curves (laparoscopic liver: ridge, falciform ligament, silhouette).

Three ways they are stored, all read into one boolean mask per class ``{name: [H, W]}``:

- **P2ILF colour contours**: one image with every landmark drawn in its colour (red ridge, blue
  ligament, yellow silhouette), saved as JPEG, so colours are matched with a ``tolerance``;
- **P2ILF XML contours**: ``<contour><contourType>Ridge</contourType><imagePoints><x>..</x><y>..</y>``
  polylines in image pixels, drawn here;
- **per-class mask PNGs** (the L3D layout): one binary image per landmark class.

Curves are one pixel wide; ``line_width`` (odd, pixels) dilates them into training bands.
Hand-written because no imaging library reads these challenge formats.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .io import DataError

LANDMARK_COLOURS: dict[str, tuple[int, int, int]] = {
    "ridge": (255, 0, 0),
    "ligament": (0, 0, 255),
    "silhouette": (255, 255, 0),
}
_XML_TYPES = {"ridge": "ridge", "ligament": "ligament", "silhouette": "silhouette"}


def thicken(mask: np.ndarray, line_width: int) -> np.ndarray:
    """Dilate a 1-pixel curve into a band ``line_width`` pixels wide (a disc of that diameter)."""
    if line_width < 1 or line_width % 2 == 0:
        raise ValueError(f"line_width must be a positive odd number of pixels, got {line_width}")
    if line_width == 1:
        return mask.astype(bool)
    r = line_width // 2
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return ndimage.binary_dilation(mask.astype(bool), structure=(yy**2 + xx**2) <= r * r)


def read_colour_contours(
    path: Path,
    colours: dict[str, tuple[int, int, int]] | None = None,
    tolerance: float = 100.0,
    line_width: int = 1,
) -> dict[str, np.ndarray]:
    """Masks of the pixels whose colour is within ``tolerance`` (RGB distance) of a class colour and
    nearer to it than to black or any other class colour (JPEG blurs and shifts the drawn colours)."""
    colours = colours or LANDMARK_COLOURS
    try:
        rgb = np.asarray(Image.open(path).convert("RGB"), np.float32)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the contour image ({e})") from None
    refs = np.array([(0, 0, 0), *colours.values()], np.float32)
    dist = np.linalg.norm(rgb[:, :, None, :] - refs[None, None], axis=-1)
    nearest = dist.argmin(-1)
    close = dist.min(-1) <= tolerance
    return {name: thicken((nearest == i + 1) & close, line_width) for i, name in enumerate(colours)}


def read_contour_xml(path: Path, size: tuple[int, int], line_width: int = 1) -> dict[str, np.ndarray]:
    """Draw the polylines of a P2ILF contour XML into ``[H, W]`` masks (``size`` = (H, W)); a landmark
    type may have several contours. Unknown contour types are an error naming them."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise DataError(f"{path}: cannot read the contour XML ({e})") from None
    h, w = size
    canvases = {name: Image.new("1", (w, h), 0) for name in _XML_TYPES.values()}
    for contour in root.iter("contour"):
        kind = (contour.findtext("contourType") or "").strip().lower()
        if kind not in _XML_TYPES:
            raise DataError(f"{path}: contourType {kind!r} is not one of {', '.join(_XML_TYPES)}")
        points = contour.find("imagePoints")
        xs = _numbers(points.findtext("x") if points is not None else None, path)
        ys = _numbers(points.findtext("y") if points is not None else None, path)
        if len(xs) != len(ys):
            raise DataError(f"{path}: a {kind} contour has {len(xs)} x but {len(ys)} y coordinates")
        draw = ImageDraw.Draw(canvases[_XML_TYPES[kind]])
        if len(xs) == 1:
            draw.point([(xs[0], ys[0])], fill=1)
        elif xs:
            draw.line(list(zip(xs, ys, strict=True)), fill=1, width=1)
    return {name: thicken(np.asarray(c, bool), line_width) for name, c in canvases.items()}


def _numbers(text: str | None, path: Path) -> list[float]:
    if not text or not text.strip():
        return []
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise DataError(f"{path}: contour coordinates must be numbers, got {text[:40]!r}...") from None


def read_class_masks(paths: dict[str, Path], line_width: int = 1) -> dict[str, np.ndarray]:
    """Per-class binary mask images (the L3D layout): non-zero pixels are the curve."""
    out: dict[str, np.ndarray] = {}
    for name, path in paths.items():
        try:
            arr = np.asarray(Image.open(path).convert("L"))
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read the {name} mask ({e})") from None
        out[name] = thicken(arr > 127, line_width)
    return out


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics and distortion of the camera that took a frame (pixels)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = ()

    def matrix(self) -> np.ndarray:
        """The 3 x 3 camera matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


def read_intrinsics(path: Path) -> CameraIntrinsics:
    """P2ILF's ``acquisition-camera-metadata.json`` (numbers stored as strings; k1-k4, p1, p2 distortion)."""
    try:
        data = json.loads(Path(path).read_text())
        values = {k: float(data[k]) for k in ("width", "height", "fx", "fy", "cx", "cy")}
        dist = tuple(float(data[k]) for k in ("k1", "k2", "p1", "p2", "k3", "k4") if k in data)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"{path}: not a camera metadata file with width, height, fx, fy, cx, cy ({e})"
        ) from None
    return CameraIntrinsics(
        int(values["width"]),
        int(values["height"]),
        values["fx"],
        values["fy"],
        values["cx"],
        values["cy"],
        dist,
    )
