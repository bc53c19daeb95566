"""Cached image embeddings: when nothing in or before the image encoder trains and training images are
not augmented, each image is encoded once and the prompt encoder + mask decoder train on the stored
embedding (MedSAM-style precomputed embeddings), instead of re-running a frozen encoder every epoch.

Kept in memory for the run, or on disk (``train.embedding_cache: disk``) under
``$MEDPEFT_CACHE/embeddings`` (default ``~/.cache/medpeft``), one file per image keyed by the base
weights' hash, the image file (path, size, modification time) and the preprocessing (input size,
resize, normalisation): change any of them and the embedding is computed again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def _augments(cfg: Any) -> list[str]:
    """The ``data.augment`` keys that change training images (any ``*_p`` above 0)."""
    augment = cfg.data.augment
    return [k for k, v in augment.model_dump().items() if k.endswith("_p") and v > 0]


def cache_mode(cfg: Any, model: nn.Module, processes: int = 1) -> tuple[str, str]:
    """(``memory`` | ``disk`` | ``off``, the line that says why) for this run."""
    wanted = cfg.train.embedding_cache
    if wanted == "off":
        return "off", "image embeddings recomputed every step (train.embedding_cache: off)"
    if cfg.task != "segmentation" or not hasattr(model, "image_embeddings") or cfg.model.depth_guided:
        return "off", ""  # the cache serves the 2D promptable segmenters
    why_not = None
    augmenting = _augments(cfg)
    if augmenting:
        why_not = f"data.augment changes the images ({', '.join(augmenting)} > 0)"
    elif processes > 1:
        why_not = "several processes train"
    elif _encoder_trains(model, cfg.model.image_size):
        why_not = "the image encoder (or something before it) trains"
    if why_not is not None:
        if wanted != "auto":
            raise ValueError(f"train.embedding_cache: {wanted}: cannot cache image embeddings: {why_not}")
        return "off", ""
    mode = "memory" if wanted == "auto" else wanted
    where = f" in {cache_root()}" if mode == "disk" else " in memory"
    return mode, (
        f"image embeddings cached{where}: nothing up to the image encoder trains and images are not "
        "augmented (train.embedding_cache: off to recompute)"
    )


def _encoder_trains(model: nn.Module, size: int) -> bool:
    """Whether the image embedding depends on a trainable tensor: traced, so every backbone and method
    is judged by what its forward pass actually reaches."""
    device = next(model.parameters()).device
    probe = torch.zeros(1, 3, size, size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model.image_embeddings(probe)
    finally:
        model.train(was_training)
    return any(t.requires_grad for t in (out if isinstance(out, (list, tuple)) else [out]))


def cache_root() -> Path:
    return Path(os.environ.get("MEDPEFT_CACHE", Path.home() / ".cache" / "medpeft")) / "embeddings"


class EmbeddingCache:
    """Embeddings per dataset item (``batch["index"]``), computed on first use."""

    def __init__(self, dataset: Any, base_sha256: str, cfg: Any, disk: bool = False) -> None:
        self.dataset, self.disk = dataset, disk
        self.memory: dict[int, list[torch.Tensor]] = {}
        self.prefix = f"{base_sha256}|{cfg.model.image_size}|{cfg.data.resize}|{cfg.data.normalize}"
        self.computed = 0  # images encoded (the rest came from the cache)

    def _key(self, index: int) -> str:
        path = Path(self.dataset.records[index].image)
        stat = path.stat()
        text = f"{self.prefix}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        return hashlib.sha256(text.encode()).hexdigest()

    def _read(self, index: int) -> list[torch.Tensor] | None:
        if index in self.memory:
            return self.memory[index]
        if self.disk:
            file = cache_root() / f"{self._key(index)}.safetensors"
            if file.is_file():
                stored = load_file(str(file))
                self.memory[index] = [stored[str(k)] for k in range(len(stored))]
                return self.memory[index]
        return None

    def _write(self, index: int, tensors: list[torch.Tensor]) -> None:
        self.memory[index] = tensors
        if self.disk:
            root = cache_root()
            root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
            os.close(fd)
            save_file({str(k): t.contiguous() for k, t in enumerate(tensors)}, tmp)
            os.replace(tmp, root / f"{self._key(index)}.safetensors")  # atomic: never a half-written file

    @torch.no_grad()
    def embeddings(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor | list[torch.Tensor]:
        """The batch's image embeddings (SAM: a tensor; SAM2: its list of FPN levels)."""
        indices = [int(i) for i in batch["index"]]
        found = [self._read(i) for i in indices]
        missing = [row for row, f in enumerate(found) if f is None]
        if missing:
            images = batch["image"][missing]
            was_training = model.training
            model.eval()
            try:
                out = model.image_embeddings(images)
            finally:
                model.train(was_training)
            levels = out if isinstance(out, (list, tuple)) else [out]
            for j, row in enumerate(missing):
                found[row] = [level[j].detach().cpu() for level in levels]
                self._write(indices[row], found[row])
            self.computed += len(missing)
        device = batch["image"].device
        stacked = [torch.stack([f[k] for f in found]).to(device) for k in range(len(found[0]))]
        return stacked if len(stacked) > 1 else stacked[0]
