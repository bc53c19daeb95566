"""Port `SamModel` weights trained at one image size to another (a multiple of 16).

Only two kinds of tensor depend on the image size: the absolute ``vision_encoder.pos_embed``
([1, grid, grid, C]) and the ``rel_pos_h``/``rel_pos_w`` tables ([2*grid-1, head_dim]) of the
global-attention blocks. Windowed blocks' tables depend on the window only and are kept as is.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from transformers import SamConfig, SamModel

POS_EMBED = "vision_encoder.pos_embed"
_REL_POS = re.compile(r"vision_encoder\.layers\.(\d+)\.attn\.rel_pos_[hw]")


def resize_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize a [1, G, G, C] pos_embed to [1, grid, grid, C].

    Downsizing average-pools (``avg_pool2d`` with kernel G // grid when it divides evenly, area
    interpolation otherwise); upsizing is bilinear.
    """
    src = pos_embed.shape[1]
    if pos_embed.dim() != 4 or pos_embed.shape[2] != src:
        raise ValueError(f"expected a [1, G, G, C] pos_embed, got {tuple(pos_embed.shape)}")
    if src == grid:
        return pos_embed
    x = pos_embed.permute(0, 3, 1, 2).float()
    if grid < src and src % grid == 0:
        x = F.avg_pool2d(x, kernel_size=src // grid)
    elif grid < src:
        x = F.adaptive_avg_pool2d(x, grid)
    else:
        x = F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos_embed.dtype).contiguous()


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly interpolate an [L, head_dim] relative-position table to [length, head_dim].

    Same interpolation as SAM's own ``get_rel_pos`` when the table and the grid disagree.
    """
    if rel_pos.shape[0] == length:
        return rel_pos
    x = rel_pos.float().T.unsqueeze(0)  # [1, head_dim, L]
    x = F.interpolate(x, size=length, mode="linear", align_corners=False)
    return x.squeeze(0).T.to(rel_pos.dtype).contiguous()


def port_state_dict(sd: Mapping[str, torch.Tensor], target_config: SamConfig) -> dict[str, torch.Tensor]:
    """Adapt a `SamModel` state dict to ``target_config``'s image size.

    Resizes ``pos_embed`` and the global-attention rel_pos tables; everything else is passed
    through untouched, so that ``load_state_dict(strict=True)`` catches any other mismatch.
    Raises ValueError where a tensor cannot be ported faithfully (e.g. a different window size).
    """
    vision = target_config.vision_config
    grid = vision.image_size // vision.patch_size
    out = dict(sd)
    src_grid = sd[POS_EMBED].shape[1] if POS_EMBED in sd else None
    if POS_EMBED in sd:
        out[POS_EMBED] = resize_pos_embed(sd[POS_EMBED], grid)
    for key, value in sd.items():
        m = _REL_POS.fullmatch(key)
        if m is None:
            continue
        layer = int(m[1])
        is_global = layer in vision.global_attn_indexes or vision.window_size == 0
        if is_global:
            if src_grid is not None and value.shape[0] != 2 * src_grid - 1:
                raise ValueError(
                    f"{key} has length {value.shape[0]}, not 2*{src_grid}-1: block {layer} is not a "
                    "global-attention block in the source weights"
                )
            out[key] = resize_rel_pos(value, 2 * grid - 1)
        elif value.shape[0] != 2 * vision.window_size - 1:
            raise ValueError(
                f"{key} has length {value.shape[0]} but the target window size {vision.window_size} "
                f"needs {2 * vision.window_size - 1}: windowed tables are not resized"
            )
    return out


def tiling_window(grid: int, window: int) -> int:
    """The window that tiles a ``grid`` x ``grid`` token map without padding and is nearest to ``window``
    (the larger on a tie): 16 for ViT-B's 14 at 256 px (one window) and at 1024 px (4 x 4 windows)."""
    divisors = [d for d in range(1, grid + 1) if grid % d == 0]
    return min(divisors, key=lambda d: (abs(d - window), -d))


def with_window(model: SamModel, window: int | str) -> SamModel:
    """``model`` with attention windows of ``window`` tokens (``auto``: :func:`tiling_window`); the windowed
    blocks' ``rel_pos`` tables are interpolated to ``2 * window - 1``, everything else is loaded as is."""
    from .loading import build_sam

    vision = model.config.vision_config
    grid = vision.image_size // vision.patch_size
    size = tiling_window(grid, vision.window_size) if window == "auto" else int(window)
    if not 1 <= size <= grid:
        raise ValueError(
            f"model.window_size {window}: expected 1..{grid} tokens (the grid at this image size)"
        )
    if size == vision.window_size or vision.window_size == 0:
        return model
    config = copy.deepcopy(model.config)
    config.vision_config.window_size = size
    state = {}
    for key, value in model.state_dict().items():
        m = _REL_POS.fullmatch(key)
        if m is not None and int(m[1]) not in vision.global_attn_indexes:
            value = resize_rel_pos(value, 2 * size - 1)
        state[key] = value
    ported = build_sam(config)
    ported.load_state_dict(state, strict=True)
    return ported
