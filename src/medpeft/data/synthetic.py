"""A synthetic set where the target is invisible in RGB but visible in depth: the check that a
depth-guided model really uses depth (and that an RGB-only one cannot).

Every frame is one texture (the same random noise field inside and outside the target, so no colour
or edge reveals it) with a landmark-like disc; its depth map (``depth/``, 16-bit PNG in mm) is a
tilted plane with the disc raised towards the camera.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_depth_matters_dataset(
    root: Path, n: int = 24, size: int = 128, seed: int = 0, label: str = "raised"
) -> Path:
    """Write ``root/images``, ``root/masks``, ``root/depth`` and ``root/labels.json``; returns ``root``."""
    root = Path(root)
    for sub in ("images", "masks", "depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    for i in range(n):
        texture = rng.integers(60, 200, (size // 4, size // 4, 3), dtype=np.uint8)
        image = np.kron(texture, np.ones((4, 4, 1), np.uint8))  # 4x4 blocks: texture, not noise
        r = rng.uniform(0.14, 0.24) * size
        cy, cx = rng.uniform(r + 2, size - r - 2, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        tilt = rng.uniform(-0.5, 0.5, 2)
        depth = 2000.0 + 300.0 * (tilt[0] * yy + tilt[1] * xx) / size  # mm, a tilted plane
        depth[disc] -= 250.0  # raised towards the camera
        Image.fromarray(image).save(root / "images" / f"frame{i:03d}.png")
        Image.fromarray((disc * 255).astype(np.uint8)).save(root / "masks" / f"frame{i:03d}.png")
        Image.fromarray(np.round(depth).astype(np.uint16)).save(root / "depth" / f"frame{i:03d}.png")
    (root / "labels.json").write_text(f'{{"1": "{label}"}}\n')
    return root
