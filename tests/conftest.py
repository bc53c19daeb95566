"""Shared fixtures: tiny synthetic folder datasets and tiny configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models gain nothing from threads, and two threads on a busy 2-core machine stall each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_shapes_dataset(root: Path, n: int = 24, size: int = 64, seed: int = 0, big: bool = False) -> Path:
    """Folder dataset of noisy images with a bright disc (label 1) and a dark square (label 2).

    ``big`` draws larger shapes (the disc covers roughly a fifth of the image), which a tiny random-init
    SAM learns within a minute on a CPU.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        img = rng.normal(120, 20, (size, size)).clip(0, 255)
        label = np.zeros((size, size), np.uint8)
        r = rng.integers(size // 5, size // 3) if big else rng.integers(size // 8, size // 5)
        cy, cx = rng.integers(r + 1, size - r - 1, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        s = rng.integers(size // 4, size // 2) if big else rng.integers(size // 6, size // 3)
        y0, x0 = rng.integers(0, size - s, 2)
        square = np.zeros_like(disc)
        square[y0 : y0 + s, x0 : x0 + s] = True
        square &= ~disc
        img[disc] = 220
        img[square] = 30
        label[disc] = 1
        label[square] = 2
        Image.fromarray(img.astype(np.uint8)).save(root / "images" / f"img{i:03d}.png")
        Image.fromarray(label).save(root / "masks" / f"img{i:03d}.png")
    (root / "labels.json").write_text(json.dumps({"1": "disc", "2": "square"}))
    return root


@pytest.fixture(autouse=True, scope="session")
def _slice_cache(tmp_path_factory):
    """Volume slices go to a per-session cache, never the user's ~/.cache."""
    import os

    previous = os.environ.get("MEDPEFT_CACHE")
    os.environ["MEDPEFT_CACHE"] = str(tmp_path_factory.mktemp("medpeft-cache"))
    yield
    if previous is None:
        os.environ.pop("MEDPEFT_CACHE", None)
    else:
        os.environ["MEDPEFT_CACHE"] = previous


def train_killed_at_loss_call(cfg, call: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``train(cfg)`` and kill it (KeyboardInterrupt) inside its ``call``-th loss evaluation."""
    from medpeft.engine.trainer import train
    from medpeft.tasks.segmentation_loss import SegmentationLoss

    calls = {"n": 0}
    original = SegmentationLoss.forward

    def killed(self, logits, target, valid=None):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(self, logits, target, valid)

    monkeypatch.setattr(SegmentationLoss, "forward", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    monkeypatch.setattr(SegmentationLoss, "forward", original)


@pytest.fixture
def shapes_dataset(tmp_path: Path) -> Path:
    return make_shapes_dataset(tmp_path / "shapes")


def tiny_config_dict(data_root: Path, out: Path, **train) -> dict:
    """A config for the tiny SAM preset at 64x64 on a synthetic dataset."""
    return {
        "model": {"base": "sam-tiny", "image_size": 64},
        "data": {"root": str(data_root), "split": [0.6, 0.2, 0.2], "augment": {"hflip_p": 0.5}},
        "adapters": [{"name": "lora", "r": 2}, {"name": "decoder"}],
        "train": {"output_dir": str(out), "epochs": 2, "batch_size": 4, "lr": 1e-3, "log_every": 1, **train},
    }


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (real data lives beside the repository at ../shared/data)")
    return path
