"""What every backbone's loader shares: weight hashes, hub access, checkpoint reading, size rules."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import torch
from huggingface_hub import constants as hub_constants

CHECKPOINT_SUFFIXES = (".pth", ".pt")
_TRUE = {"1", "on", "yes", "true"}
M = TypeVar("M")


class BaseModelUnavailable(RuntimeError):
    """The base model could not be fetched (typically: no network and not in the local cache)."""


def weights_sha256(model: torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over all state-dict tensors (name, dtype, shape, bytes) in sorted key order."""
    sd = model.state_dict() if isinstance(model, torch.nn.Module) else model
    digest = hashlib.sha256()
    for key in sorted(sd):
        tensor = sd[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def offline() -> bool:
    """True when the user asked transformers / the hub client to stay offline."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.strip().lower() in _TRUE or bool(hub_constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Quick TCP check of the hub endpoint (True where a proxy is configured: not checkable here)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(hub_constants.ENDPOINT)
    reached: list[bool] = []

    def probe() -> None:  # in a thread, so that a slow DNS lookup is bounded by the timeout too
        try:
            with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
                reached.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(reached)


def from_hub(load: Callable[..., M], source: str) -> M:
    """``load(source, local_files_only=...)`` from the hub; cache only when offline or unreachable."""
    local_only = offline() or not hub_reachable()
    try:
        return load(source, local_files_only=local_only)
    except Exception as err:  # noqa: BLE001 - any failure means the base model is unavailable
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BaseModelUnavailable(
            f"could not load base model {source!r} from the hub (offline?): {detail}"
        ) from err


def from_local_dir(load: Callable[..., M], path: Path, what: str) -> M:
    """``load(path, local_files_only=True)``; a folder of another kind is one clear error."""
    try:
        return load(path, local_files_only=True)
    except Exception as err:  # noqa: BLE001
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{str(path)!r} is not a {what} saved with save_pretrained: {detail}") from None


def read_torch_checkpoint(path: Path) -> Any:
    """``torch.load`` of a tensor-only checkpoint; a damaged or pickled-code file is one clear error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, not a torch file, or pickled code
        raise ValueError(
            f"base model checkpoint {str(path)!r} cannot be read ({type(err).__name__}): "
            "truncated, or not a tensor-only PyTorch checkpoint"
        ) from None


def looks_like_path(source: str) -> bool:
    """A source meant as a file or folder (so a missing one is an error, not a hub id)."""
    return source.startswith(("/", "./", "../", "~")) or source.endswith(CHECKPOINT_SUFFIXES)


def nearest_multiples(size: int, multiple: int) -> tuple[int, int]:
    """The valid sizes just below (at least ``multiple``) and just above ``size``."""
    below = max(multiple, (size // multiple) * multiple)
    above = max(multiple, -(-size // multiple) * multiple)
    if above == below:
        above += multiple
    return below, above


def check_multiple(image_size: Any, multiple: int, model: str) -> int:
    """``image_size`` if a positive multiple of ``multiple``; else an error naming the rule and nearest sizes."""
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise ValueError(f"image_size must be an int, got {image_size!r}")
    if image_size <= 0 or image_size % multiple:
        below, above = nearest_multiples(max(image_size, 1), multiple)
        raise ValueError(
            f"image_size {image_size}: {model} needs a positive multiple of {multiple}; "
            f"nearest valid sizes are {below} and {above}"
        )
    return image_size


def saved_model_type(source: str) -> str | None:
    """``model_type`` of a ``save_pretrained`` folder's ``config.json`` (None: not such a folder)."""
    path = Path(source).expanduser() / "config.json"
    if not path.is_file():
        return None
    import json

    try:
        return str(json.loads(path.read_text()).get("model_type"))
    except (OSError, ValueError):
        return None


def source_kind(source: str, names: tuple[str, ...], model: str, hub_example: str) -> str:
    """How to read ``model.base``: ``named`` (a preset or bundled name), ``local`` (a ``save_pretrained``
    folder), ``pth`` (an original checkpoint file) or ``hub``; anything else is one clear error."""
    path = Path(source).expanduser()
    if source in names:
        return "named"
    if path.is_dir():
        return "local"
    if path.is_file():
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise ValueError(f"unsupported {model} checkpoint file {source!r}: expected .pth or .pt")
        return "pth"
    if looks_like_path(source):
        raise ValueError(
            f"{model} checkpoint {source!r} does not exist (model.base: a preset, hub id, folder or .pth)"
        )
    if "/" not in source:
        raise ValueError(
            f"unknown {model} base model {source!r}: not a preset or bundled name ({', '.join(names)}), "
            f"not an existing path and not a hub id such as {hub_example}"
        )
    return "hub"
