"""Registry of backbones (timm-style): one module per model family registers one :class:`Backbone`.

A backbone entry says how to load the base model from a source (preset, bundled foundation, hub id,
``save_pretrained`` folder, original checkpoint), its input-size rule, its pixel normalisation, how
to wrap it for its task, and its table of symbolic adapter targets (peft's per-model target table).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from medpeft.adapters.targets import SYMBOLIC
from medpeft.backbones.hub import looks_like_path
from medpeft.backbones.identity import BaseIdentity

# Symbolic target names every backbone maps to regexes over its module (or parameter) names (the
# methods resolve them: see medpeft.adapters.targets).
TARGET_NAMES = SYMBOLIC


@dataclass(frozen=True)
class Backbone:
    """One registered backbone family.

    ``load(source, image_size) -> (base, identity)``: the base model and its :class:`BaseIdentity`;
    ``wrap(base, label_names, class_prompt)``: the task model (a segmenter or a depth model) exposing
    ``target_table``; ``claims(source)``: whether a ``model.base`` value belongs to this family (preset
    names, hub-id prefixes, saved configs); ``normalize``: the pixel normalisation its weights expect
    (a ``data.normalize`` mode; all three foundations use ImageNet statistics, ``sam``); ``task`` the
    default task, ``other_tasks`` the others it serves (Depth Anything: ``selfsup_depth``).
    """

    name: str
    task: str
    load: Callable[[str, int], tuple[nn.Module, BaseIdentity]]
    wrap: Callable[..., nn.Module]
    check_size: Callable[[int], int]
    claims: Callable[[str], bool]
    targets: Mapping[str, str]
    default_image_size: int
    presets: tuple[str, ...] = ()
    normalize: str = "sam"
    prompt_dim: Callable[[nn.Module], int] | None = None
    other_tasks: tuple[str, ...] = ()  # further tasks a config may name (``task``) for this family
    # keyword options of the label-name text model (``TextEncoder``) for this base, e.g. SegVol's
    # unprojected CLIP state and a released checkpoint's own CLIP weights
    text_options: Callable[[nn.Module], dict[str, Any]] | None = None
    # volume models: the input shape (D, H, W) of ``model.base`` at ``model.image_size``, without loading it
    input_shape: Callable[[str, int], tuple[int, int, int]] | None = None


_BACKBONES: dict[str, Backbone] = {}


def register_backbone(backbone: Backbone) -> Backbone:
    """Add a backbone; its target table may only use the symbolic names in :data:`TARGET_NAMES`."""
    if backbone.name in _BACKBONES:
        raise ValueError(f"backbone {backbone.name!r} is registered twice")
    unknown = set(backbone.targets) - set(TARGET_NAMES)
    if unknown:
        raise ValueError(f"backbone {backbone.name!r}: unknown target names {sorted(unknown)}")
    _BACKBONES[backbone.name] = backbone
    return backbone


def _load_builtin() -> None:
    from medpeft.backbones import builtin  # noqa: F401


def available_backbones() -> list[str]:
    """Names of every registered backbone."""
    _load_builtin()
    return sorted(_BACKBONES)


def get_backbone(name: str) -> Backbone:
    """The backbone registered as ``name``, with the valid names on error."""
    _load_builtin()
    if name not in _BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; expected one of: {', '.join(sorted(_BACKBONES))}")
    return _BACKBONES[name]


def backbone_for(source: str, name: str | None = None) -> Backbone:
    """The backbone of ``model.base`` = ``source``: ``name`` when given (checked), else the one that claims it.

    A hub id or file no family claims is SAM's, as before there were others; a bare name no family has
    is an error listing every family's presets.
    """
    _load_builtin()
    if name is not None:
        return get_backbone(name)
    for backbone in _BACKBONES.values():
        if backbone.claims(source):
            return backbone
    if "/" not in source and not looks_like_path(source) and not Path(source).expanduser().exists():
        presets = "; ".join(f"{b.name}: {', '.join(b.presets)}" for b in _BACKBONES.values())
        raise ValueError(f"unknown base model {source!r}: not a preset ({presets}), path or hub id")
    return _BACKBONES["sam"]
