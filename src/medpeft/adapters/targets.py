"""Resolve a method's targets: a symbolic name from the model's backbone table, or a user regex.

The task model (segmenter or depth model) carries its backbone's ``target_table`` (symbolic name ->
regex over module or parameter names); a name there is looked up, anything else is a regex. Matching
is a full match under any prefix, so a table written for ``SamModel`` also matches inside a wrapper.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from torch import nn

# qkv/q/v/attn_out/attn/mlp/all: encoder linear layers; blocks: the block prefix with the block index
# as group 1, in forward order; pos_embed: parameter names; encoder_norms: LayerNorm modules of the
# encoder; encoder/decoder/prompt_encoder: module prefixes; neck: the encoder's output convolutions;
# patch_embed: the patch projection (a 3D encoder's Conv3d).
SYMBOLIC: tuple[str, ...] = (
    "qkv",
    "q",
    "v",
    "qv",
    "attn_out",
    "attn",
    "mlp",
    "all",
    "blocks",
    "pos_embed",
    "patch_embed",
    "encoder_norms",
    "encoder",
    "decoder",
    "prompt_encoder",
    "neck",
)


def backbone_name(model: nn.Module) -> str:
    """The model's backbone, for messages."""
    return str(getattr(model, "backbone_name", type(model).__name__))


def has_target(model: nn.Module, name: str) -> bool:
    """Whether the model's backbone maps symbolic ``name``."""
    return name in getattr(model, "target_table", {})


def target_regex(model: nn.Module, target: str, method: str) -> re.Pattern[str]:
    """The compiled full-match pattern of ``target`` (symbolic name or regex) on ``model``."""
    table = getattr(model, "target_table", {})
    if target in SYMBOLIC:
        if target not in table:
            raise ValueError(
                f"{method}: backbone {backbone_name(model)!r} has no {target!r} target "
                f"(it maps: {', '.join(sorted(table))})"
            )
        pattern = table[target]
    else:
        pattern = target
    try:
        return re.compile(r"(?:.*\.)?(?:" + pattern + ")")
    except re.error as err:
        raise ValueError(f"{method}: invalid target regex {target!r}: {err}") from None


def modules_matching(
    model: nn.Module,
    target: str,
    method: str,
    kind: type[nn.Module] | tuple[type[nn.Module], ...] = nn.Module,
) -> list[str]:
    """Names of modules of type ``kind`` whose full name matches ``target``; an error when none does."""
    pattern = target_regex(model, target, method)
    names = [n for n, m in model.named_modules() if n and isinstance(m, kind) and pattern.fullmatch(n)]
    if not names:
        what = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ValueError(
            f"{method}: target {target!r} matches no {what} of backbone {backbone_name(model)!r}"
        )
    return names


def parameters_matching(model: nn.Module, target: str, method: str) -> Iterator[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs whose full name matches ``target``."""
    pattern = target_regex(model, target, method)
    return ((n, p) for n, p in model.named_parameters() if pattern.fullmatch(n))


def block_index(model: nn.Module, module_name: str) -> int | None:
    """Index of the encoder block ``module_name`` lies in (the backbone's ``blocks`` group 1)."""
    pattern = target_regex(model, "blocks", "blocks")
    m = pattern.fullmatch(module_name)
    return int(m.group(1)) if m else None


def num_blocks(model: nn.Module) -> int:
    """Number of encoder blocks, from the module names the ``blocks`` pattern indexes."""
    found = {i for n, _ in model.named_modules() if (i := block_index(model, n)) is not None}
    if not found:
        raise ValueError(f"backbone {backbone_name(model)!r}: no encoder block matches its 'blocks' target")
    return max(found) + 1


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at dotted ``name`` for ``new`` (the one copy of module surgery)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def name_matcher(model: nn.Module, target: str, method: str) -> re.Pattern[str] | None:
    """For user regexes that keep ``re.search`` semantics (S-SAM's, GaLore's): the table pattern of a
    symbolic name, to be full-matched, or None when ``target`` is a plain regex."""
    return target_regex(model, target, method) if target in SYMBOLIC else None


def inside(model: nn.Module, target: str, method: str) -> re.Pattern[str]:
    """Pattern full-matching the modules ``target`` names and every name below them."""
    pattern = target_regex(model, target, method)
    return re.compile(r"(?:" + pattern.pattern + r")(?:\..*)?")


def weight_pattern(model: nn.Module, target: str, method: str) -> str:
    """A ``re.search`` pattern for the weight matrices of ``target``'s modules (also when wrapped by
    peft as ``<module>.base_layer``); a plain regex is returned unchanged."""
    if target not in SYMBOLIC:
        return target
    return r"^" + target_regex(model, target, method).pattern + r"(\.base_layer)?\.weight$"
