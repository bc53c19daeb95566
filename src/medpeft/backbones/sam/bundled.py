"""Foundations shipped inside the package (``model.base: sam-mini-med``): float16 safetensors + a manifest.

The manifest (``<name>.json`` beside the weights) records the file's SHA-256, the preset architecture
and the parameter count; a missing or damaged file is one error naming it and how to reinstall,
never a silent fallback to random weights.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

BUNDLED_NAMES: tuple[str, ...] = ("sam-mini-med",)
REINSTALL = "reinstall medpeft (pip install --force-reinstall medpeft, or `make venv` in a checkout)"


class BundledWeightsError(RuntimeError):
    """A bundled foundation's weights file is missing or damaged."""


def weights_dir() -> Path:
    return Path(str(resources.files("medpeft") / "weights"))


def manifest(name: str) -> dict[str, Any]:
    path = weights_dir() / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundledWeightsError(
            f"bundled model {name!r}: {path} is missing or unreadable ({e}); {REINSTALL}"
        ) from None


def load_bundled_state_dict(name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The verified float32 state dict of a bundled foundation and its manifest."""
    info = manifest(name)
    path = weights_dir() / info["file"]
    if not path.is_file():
        raise BundledWeightsError(f"bundled model {name!r}: {path} is missing; {REINSTALL}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != info["sha256"]:
        raise BundledWeightsError(
            f"bundled model {name!r}: {path} is corrupt (SHA-256 {digest[:12]}..., expected "
            f"{info['sha256'][:12]}...); {REINSTALL}"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise BundledWeightsError(
            f"bundled model {name!r}: {path} cannot be read ({e}); {REINSTALL}"
        ) from None
    return {k: v.float() for k, v in tensors.items()}, info
