"""SegVol: a 3D promptable segmenter (text, box, point prompts) as a backbone of the volume task.

Sources: a preset (``segvol-tiny`` for tests, ``segvol-mini`` trainable on a CPU, ``segvol`` the published
size, all random-init), a folder written by :func:`save_segvol` (``segvol_config.json`` +
``model.safetensors``: a foundation trained here), or the released ``SegVol_v1.pth``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from medpeft.backbones.hub import read_torch_checkpoint, source_kind
from medpeft.backbones.identity import BaseIdentity
from medpeft.backbones.registry import Backbone, register_backbone

from .convert import convert_segvol_state_dict, is_released_segvol
from .model import SegVolConfig, SegVolModel
from .segmenter import SEGVOL_TARGETS, SegVolSegmenter

PRESETS: dict[str, SegVolConfig] = {
    "segvol-tiny": SegVolConfig(
        roi=(8, 32, 32),
        patch=(4, 16, 16),
        width=32,
        mlp_dim=64,
        layers=2,
        heads=2,
        decoder_heads=2,
        decoder_mlp_dim=64,
        iou_hidden=32,
    ),
    "segvol-mini": SegVolConfig(
        roi=(32, 64, 64),
        patch=(4, 8, 8),
        width=96,
        mlp_dim=384,
        layers=4,
        heads=4,
        decoder_heads=4,
        decoder_mlp_dim=256,
        iou_hidden=64,
    ),
    "segvol": SegVolConfig(),
}
CONFIG_FILE = "segvol_config.json"
TEXT_TEMPLATE = "A computerized tomography of a {}."  # the release's prompt sentence


def save_segvol(model: SegVolModel, directory: Path) -> Path:
    """Write ``model`` as a folder :func:`load_segvol` reads (config + safetensors)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    (directory / CONFIG_FILE).write_text(
        json.dumps({"model_type": "segvol", **model.config.to_json()}, indent=1)
    )
    return directory


def _config_with_size(config: SegVolConfig, image_size: int) -> SegVolConfig:
    """A preset at ``image_size`` in-plane (depth kept): its position table is sized accordingly."""
    from dataclasses import replace

    return replace(config, roi=(config.roi[0], image_size, image_size))


def _from_folder(path: Path) -> SegVolModel:
    try:
        data = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not a SegVol folder ({CONFIG_FILE} unreadable: {e})") from None
    data.pop("model_type", None)
    model = SegVolModel(SegVolConfig.from_json(data))
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    head = path / "medpeft_head.json"  # a merged run's label vocabulary (``medpeft merge``)
    if head.is_file() and (path / "medpeft_head.safetensors").is_file():
        model.head_labels = list(json.loads(head.read_text()).get("label_names") or [])
        model.head_state = load_file(str(path / "medpeft_head.safetensors"))
    return model


def _from_release(path: Path, config: SegVolConfig | None = None) -> SegVolModel:
    """The released checkpoint (``config``: the published size); its text tower is kept as
    ``released_text``."""
    checkpoint = read_torch_checkpoint(path)
    inner = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(inner, dict) or not is_released_segvol(inner):
        raise ValueError(f"{path}: not a released SegVol checkpoint (no perceptron patch embedding)")
    config = config or SegVolConfig()
    state, text = convert_segvol_state_dict(checkpoint, config)
    model = SegVolModel(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{path}: does not fit the published SegVol size: {str(e).splitlines()[1]}"
        ) from None
    model.released_text = text
    return model


def load_segvol(source: str, image_size: int = 64) -> tuple[SegVolModel, BaseIdentity]:
    """Load a SegVol base and return ``(model, identity)``; presets are drawn at ``image_size`` in-plane,
    loaded weights must match it."""
    kind = source_kind(source, tuple(PRESETS), "SegVol", "(none: SegVol loads from files)")
    path = Path(source).expanduser()
    if kind == "named":
        kind, model = "preset", SegVolModel(_config_with_size(PRESETS[source], image_size))
    elif kind == "local":
        model = _from_folder(path)
    elif kind == "pth":
        model = _from_release(path)
    else:
        raise ValueError(
            f"SegVol {source!r}: give a preset ({', '.join(PRESETS)}), a folder or SegVol_v1.pth"
        )
    if model.config.roi[-1] != image_size and kind != "preset":
        raise ValueError(
            f"model.image_size {image_size}: SegVol {source!r} takes {model.config.roi} volumes; "
            f"set model.image_size: {model.config.roi[-1]}"
        )
    return model.eval(), BaseIdentity.of(model, source, kind, image_size, "segvol")


def _wrap(
    base: SegVolModel, label_names: list[str], class_prompt: nn.Module | None = None
) -> SegVolSegmenter:
    """The segmenter, its class prompt starting from what the base knows: a released checkpoint's
    ``dim_align`` (the text projection), or a merged foundation's head (its text projection, or the learned
    token of every label it was trained on, matched by name), so label names prompt it zero-shot."""
    head = dict(getattr(base, "head_state", None) or {})
    released = getattr(base, "released_text", None) or {}
    if "dim_align.weight" in released:
        head.setdefault("affine.weight", released["dim_align.weight"])
        head.setdefault("affine.bias", released["dim_align.bias"])
    known = list(getattr(base, "head_labels", []))
    affine = getattr(class_prompt, "affine", None)
    table = getattr(class_prompt, "embedding", None)
    with torch.no_grad():
        if (
            affine is not None
            and "affine.weight" in head
            and affine.weight.shape == head["affine.weight"].shape
        ):
            affine.weight.copy_(head["affine.weight"])
            affine.bias.copy_(head["affine.bias"])
        learned = head.get("embedding.weight")
        if table is not None and learned is not None and table.weight.shape[1] == learned.shape[1]:
            for i, name in enumerate(label_names):
                if name in known:
                    table.weight[i] = learned[known.index(name)]
    return SegVolSegmenter(base, label_names, class_prompt)


def text_options(base: nn.Module) -> dict[str, Any]:
    """How the label-name text model is read for SegVol: CLIP's pooled state (no projection), with the
    released checkpoint's own CLIP weights when the base is the release."""
    released = getattr(base, "released_text", None) or {}
    clip = {k.removeprefix("clip."): v for k, v in released.items() if k.startswith("clip.")}
    return {"projection": False, "weights": clip or None}


def input_shape(source: str, image_size: int) -> tuple[int, int, int]:
    """The (D, H, W) a SegVol base takes: a preset's depth at ``image_size``, else its saved config's
    (the release: the published size)."""
    if source in PRESETS:
        return _config_with_size(PRESETS[source], image_size).roi
    folder = Path(source).expanduser()
    if (folder / CONFIG_FILE).is_file():
        data = json.loads((folder / CONFIG_FILE).read_text())
        return tuple(data["roi"])  # type: ignore[return-value]
    return SegVolConfig().roi


def _claims(source: str) -> bool:
    return (
        source in PRESETS
        or (Path(source).expanduser() / CONFIG_FILE).is_file()
        or "segvol" in Path(source).name.lower()
    )


SEGVOL = register_backbone(
    Backbone(
        name="segvol",
        task="volume_segmentation",
        load=load_segvol,
        wrap=_wrap,
        check_size=lambda size: _check_size(size),
        claims=_claims,
        targets=SEGVOL_TARGETS,
        default_image_size=64,
        presets=tuple(PRESETS),
        normalize="minmax",
        prompt_dim=lambda base: int(base.config.width),
        text_options=text_options,
        input_shape=input_shape,
    )
)


def _check_size(size: Any) -> int:
    from medpeft.backbones.hub import check_multiple

    return check_multiple(size, 16, "SegVol (in-plane patch 8 or 16)")


__all__ = [
    "PRESETS",
    "SEGVOL",
    "SegVolConfig",
    "SegVolModel",
    "SegVolSegmenter",
    "load_segvol",
    "save_segvol",
]
