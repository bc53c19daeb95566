"""Synthetic RGB + depth folder datasets whose depth can be learned from the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DEPTH_SCALE = 0.001  # the fixture's 16-bit PNGs hold millimetres; depth = raw * 0.001 metres
NEAR, FAR = 0.5, 4.0  # metres: the fixed brightness ramp spans this range


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Smooth random pattern in about [-1, 1] (a few sinusoids), so the surface is not flat colour."""
    out = np.zeros_like(yy)
    for _ in range(4):
        fy, fx = rng.uniform(2, 9, 2) * 2 * np.pi
        out += np.sin(fy * yy + fx * xx + rng.uniform(0, 2 * np.pi)) / 4
    return out


def make_depth_dataset(root: Path, n: int = 8, size: int = 56, seed: int = 0) -> Path:
    """Write ``root/images/scene*.png`` (RGB uint8) and ``root/depth/scene*.png`` (uint16, mm).

    Each scene is a randomly tilted plane 1-3.5 m away with 1-3 domes nearer to the camera. Pixels are
    lit like an endoscope's light at the camera, by a FIXED ramp over depth (nearer = brighter and
    redder; the same ramp in every image, so metric depth, not just order, is learnable), times a
    +-8% texture plus a little noise. 3-8 pixels per map are invalid (0), drawn as specular
    highlights (white) in the image, as where a real depth sensor or stereo matcher fails.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "depth").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size] / max(size - 1, 1)
    for i in range(n):
        base = rng.uniform(1.8, 2.7)
        gy, gx = rng.uniform(-0.8, 0.8, 2)
        depth = base + gy * (yy - 0.5) + gx * (xx - 0.5)
        for _ in range(int(rng.integers(1, 4))):
            r = rng.uniform(0.1, 0.22)
            cy, cx = rng.uniform(r, 1 - r, 2)
            dist2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2
            height = rng.uniform(0.4, 0.9) * base * 0.5
            depth = np.minimum(depth, depth - height * np.sqrt(np.clip(1 - dist2, 0, None)))
        shade = np.clip((FAR - depth) / (FAR - NEAR), 0, 1)  # 1 = near
        light = (25 + 225 * shade) * (1 + 0.08 * _texture(rng, yy, xx))
        rgb = np.stack([light, light * (0.45 + 0.3 * shade), light * (0.35 + 0.2 * shade)], axis=-1)
        rgb += rng.normal(0, 2.0, rgb.shape)
        raw = np.round(depth / DEPTH_SCALE).astype(np.uint16)
        holes = rng.choice(size * size, int(rng.integers(3, 9)), replace=False)
        raw.reshape(-1)[holes] = 0
        rgb.reshape(-1, 3)[holes] = 255
        Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8)).save(
            root / "images" / f"scene{i:03d}.png"
        )
        Image.fromarray(raw).save(root / "depth" / f"scene{i:03d}.png")
    return root
