"""Load a SAM base model from a preset, a local directory, a ``.pth`` checkpoint or the hub."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from huggingface_hub import constants as hub_constants
from torch import nn
from transformers import SamConfig, SamModel

from .bundled import BUNDLED_NAMES, load_bundled_state_dict
from .convert import (
    convert_segment_anything_state_dict,
    is_segment_anything_format,
    original_sam_config,
    unwrap_checkpoint,
)
from .presets import PRESET_NAMES, check_image_size, preset_config, with_image_size
from .resize import port_state_dict

_CHECKPOINT_SUFFIXES = (".pth", ".pt")
_TRUE = {"1", "on", "yes", "true"}


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


def build_sam(config: SamConfig) -> SamModel:
    """A randomly initialised `SamModel` (torch's current RNG), in eval mode, initialised as the
    original segment-anything code trains from scratch.

    transformers' N(0, 0.02) init makes a fresh SAM's mask logits ~1e-5 with gradients to match, so a
    random-init preset barely trains; here every layer gets PyTorch's default init (as segment-anything
    uses), ``pos_embed``/``rel_pos`` start at zero, and the prompt positional-encoding matrix is drawn
    from N(0, 1) (transformers uses std = vision width / 2, which makes the encoding pure noise).
    """
    model = SamModel(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding, nn.LayerNorm)):
                module.reset_parameters()
        for name, param in model.named_parameters():
            if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
                param.zero_()
        model.shared_image_embedding.positional_embedding.normal_(0.0, 1.0)  # tied to the prompt encoder
    return model.eval()


def _from_state_dict(sd: Mapping[str, torch.Tensor], native: SamConfig, image_size: int) -> SamModel:
    """Build a model at ``image_size`` and load ``sd`` (native-size weights) into it strictly."""
    target = with_image_size(native, image_size)
    model = SamModel(target)
    model.load_state_dict(port_state_dict(sd, target), strict=True)
    return model.eval()


def _offline() -> bool:
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.strip().lower() in _TRUE or bool(hub_constants.HF_HUB_OFFLINE)


def _hub_reachable(timeout: float = 3.0) -> bool:
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


def _load_hub(source: str) -> SamModel:
    """`SamModel.from_pretrained` from the hub; cache only when offline or the hub is unreachable."""
    local_only = _offline() or not _hub_reachable()
    try:
        return SamModel.from_pretrained(source, local_files_only=local_only)
    except Exception as err:  # noqa: BLE001 - any failure means the base model is unavailable
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BaseModelUnavailable(
            f"could not load base model {source!r} from the hub (offline?): {detail}"
        ) from err


def _load_pth(path: Path, image_size: int) -> SamModel:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, not a torch file, or pickled code
        raise ValueError(
            f"base model checkpoint {str(path)!r} cannot be read ({type(err).__name__}): "
            "truncated, or not a tensor-only PyTorch checkpoint"
        ) from None
    sd = unwrap_checkpoint(raw)
    native = original_sam_config(sd)
    if is_segment_anything_format(sd):
        sd = convert_segment_anything_state_dict(sd)
    return _from_state_dict(sd, native, image_size)


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or source.endswith(_CHECKPOINT_SUFFIXES)


def load_sam(source: str, image_size: int = 256) -> tuple[SamModel, dict[str, Any]]:
    """Load a SAM base model at ``image_size`` and return ``(model, identity)``.

    ``source`` is a preset name (random init from torch's current RNG), a foundation bundled with the
    package (``sam-mini-med``), a ``save_pretrained``
    directory, a segment-anything/MedSAM ``.pth``/``.pt`` file, or a hub id ``owner/name``.
    Pretrained weights are ported from their native image size and loaded with ``strict=True``.
    The identity is ``{"source", "kind", "image_size", "sha256", "random_init"}``. The model is in
    eval mode.
    """
    check_image_size(image_size)
    path = Path(source).expanduser()
    if source in PRESET_NAMES:
        kind, model = "preset", build_sam(preset_config(source, image_size))
    elif source in BUNDLED_NAMES:
        sd, info = load_bundled_state_dict(source)
        kind, model = (
            "bundled",
            _from_state_dict(sd, preset_config(info["preset"], info["image_size"]), image_size),
        )
    elif path.is_dir():
        try:
            native = SamModel.from_pretrained(path, local_files_only=True)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{source!r} is not a SamModel saved with save_pretrained: {err}") from err
        kind, model = "local", _from_state_dict(native.state_dict(), native.config, image_size)
    elif path.is_file():
        if path.suffix not in _CHECKPOINT_SUFFIXES:
            raise ValueError(f"unsupported checkpoint file {source!r}: expected .pth or .pt")
        kind, model = "pth", _load_pth(path, image_size)
    elif _looks_like_path(source):
        raise ValueError(
            f"base model checkpoint {source!r} does not exist (model.base: a preset, hub id, folder or .pth)"
        )
    elif "/" not in source:
        raise ValueError(
            f"unknown SAM base model {source!r}: not a preset ({', '.join(PRESET_NAMES)}), "
            f"not a bundled foundation ({', '.join(BUNDLED_NAMES)}), "
            "not an existing path, and not a hub id of the form 'owner/name'"
        )
    else:
        native = _load_hub(source)
        kind, model = "hub", _from_state_dict(native.state_dict(), native.config, image_size)
    identity = {
        "source": source,
        "kind": kind,
        "image_size": image_size,
        "sha256": weights_sha256(model),
        "random_init": kind == "preset",
    }
    return model, identity
