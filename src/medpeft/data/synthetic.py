"""A synthetic set where the target is invisible in RGB but visible in depth: the check that a
depth-guided model really uses depth (and that an RGB-only one cannot).

Every frame is one texture (the same random noise field inside and outside the target, so no colour
or edge reveals it) with a landmark-like disc; its depth map (``depth/``, 16-bit PNG in mm) is a
tilted plane with the disc raised towards the camera.
"""

from __future__ import annotations

from dataclasses import dataclass
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


# ----------------------------------------------------------------------------- rendered video


@dataclass(frozen=True)
class Surface:
    """A textured, curved surface ``Z = base + tilt . (X, Y) - sum of bumps`` seen by cameras looking
    along +Z (identity rotation): tissue-like folds and a raised dome, colour from smooth sinusoids."""

    base: float
    tilt: tuple[float, float]
    bumps: tuple[tuple[float, float, float, float], ...]  # (x, y, height, width)
    waves: tuple[tuple[float, float, float, int], ...]  # (fx, fy, phase, channel)

    @classmethod
    def random(cls, rng: np.random.Generator) -> Surface:
        bumps = tuple(
            (
                float(rng.uniform(-0.6, 0.6)),
                float(rng.uniform(-0.5, 0.5)),
                float(rng.uniform(0.25, 0.6)),
                float(rng.uniform(0.25, 0.45)),
            )
            for _ in range(3)
        )
        waves = tuple(
            (float(rng.uniform(-25, 25)), float(rng.uniform(-25, 25)), float(rng.uniform(0, 6.3)), i % 3)
            for i in range(12)
        )
        return cls(
            float(rng.uniform(1.8, 2.4)),
            (float(rng.uniform(-0.2, 0.2)), float(rng.uniform(-0.2, 0.2))),
            bumps,
            waves,
        )

    def depth_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        z = self.base + self.tilt[0] * x + self.tilt[1] * y
        for bx, by, bh, bw in self.bumps:
            z = z - bh * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * bw**2))
        return z

    def colour_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        rgb = np.stack([np.full_like(x, 0.55), np.full_like(x, 0.35), np.full_like(x, 0.35)], -1)
        for fx, fy, phase, c in self.waves:
            rgb[..., c] += 0.12 * np.sin(fx * x + fy * y + phase)
        return np.clip(rgb, 0, 1)


def render(
    surface: Surface, centre: np.ndarray, k: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """RGB [H, W, 3] in [0, 1] and depth [H, W] of ``surface`` from a camera at ``centre`` (world
    coordinates, looking along +Z), by ray marching to the surface (fixed-point iteration; the
    surface is smooth, so it converges)."""
    v, u = np.mgrid[:height, :width].astype(np.float64)
    rays = np.linalg.inv(k) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    rx, ry = rays[0].reshape(height, width), rays[1].reshape(height, width)
    z = np.full((height, width), surface.base - centre[2])  # depth along the optical axis
    for _ in range(60):
        z = surface.depth_at(centre[0] + z * rx, centre[1] + z * ry) - centre[2]
    return surface.colour_at(centre[0] + z * rx, centre[1] + z * ry), z


def make_video_dataset(
    root: Path, sequences: int = 3, frames: int = 8, height: int = 56, width: int = 70, seed: int = 0
) -> Path:
    """Write rendered sequences (camera gliding over a surface): ``<seq>/images``, ``<seq>/depth``
    (float32 ``.npy``, scene units) and ``<seq>/intrinsics.json``; returns ``root``."""
    import json

    rng = np.random.default_rng(seed)
    fx = 0.9 * width
    k = np.array([[fx, 0, (width - 1) / 2], [0, fx, (height - 1) / 2], [0, 0, 1.0]])
    for s in range(sequences):
        folder = Path(root) / f"seq{s:02d}"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "depth").mkdir(exist_ok=True)
        surface = Surface.random(rng)
        start = rng.uniform(-0.2, 0.2, 3) * np.array([1, 1, 0.5])
        step = rng.uniform(0.07, 0.1) * np.array([np.cos(a := rng.uniform(0, 6.3)), np.sin(a), 0.0])
        step[2] = rng.uniform(-0.02, 0.02)
        for f in range(frames):
            rgb, depth = render(surface, start + f * step, k, height, width)
            Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(folder / "images" / f"{f:04d}.png")
            np.save(folder / "depth" / f"{f:04d}.npy", depth.astype(np.float32))
        (folder / "intrinsics.json").write_text(
            json.dumps({"fx": fx, "fy": fx, "cx": k[0, 2], "cy": k[1, 2]}) + "\n"
        )
    return Path(root)


def make_volume_dataset(
    root: Path, n: int = 12, shape: tuple[int, int, int] = (48, 40, 24), seed: int = 0
) -> Path:
    """An MSD-layout volume dataset (``imagesTr/``, ``labelsTr/``, ``dataset.json``; 1 mm, RAS) of ``n``
    noisy volumes ``[X, Y, Z]`` holding a bright ellipsoid (label 1, ``ball``) and a darker box (label 2,
    ``block``) at random places: a 3D model must find both from text, box or point prompts."""
    import json

    import nibabel as nib

    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float32)
    training = []
    for i in range(n):
        label = np.zeros(shape, np.uint8)
        radii = rng.uniform(0.12, 0.2, 3) * np.array(shape)
        centre = rng.uniform(0.3, 0.7, 3) * np.array(shape)
        label[(((grid - centre) / radii) ** 2).sum(-1) <= 1] = 1
        lo = (rng.uniform(0.05, 0.5, 3) * np.array(shape)).astype(int)
        size = np.maximum(3, (rng.uniform(0.15, 0.3, 3) * np.array(shape)).astype(int))
        block = tuple(slice(a, a + b) for a, b in zip(lo, size, strict=True))
        label[block] = np.where(label[block] == 0, 2, label[block])
        image = rng.normal(0.0, 12.0, shape) + 60.0
        image[label == 1] += 120.0
        image[label == 2] += 55.0
        name = f"synthetic_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), str(root / "imagesTr" / name))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": "synthetic",
        "labels": {"0": "background", "1": "ball", "2": "block"},
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return root
