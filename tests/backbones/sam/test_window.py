"""``model.window_size``: SAM's windowed blocks without padding at small inputs."""

from __future__ import annotations

import pytest
import torch

from medpeft.backbones.sam.resize import tiling_window
from medpeft.config import parse_config
from medpeft.engine.build import build_model


def test_tiling_window_divides_the_grid_nearest_to_the_base_window() -> None:
    assert tiling_window(16, 14) == 16  # ViT-B at 256 px: one window, no padding to 28 x 28
    assert tiling_window(64, 14) == 16  # ViT-B at 1024 px: 4 x 4 windows instead of padding to 70
    assert tiling_window(16, 8) == 8 and tiling_window(6, 4) == 3


def _tokens(window) -> tuple[int, torch.Tensor, torch.nn.Module]:
    cfg = parse_config(
        {
            "model": {"base": "sam-tiny", "image_size": 96, "window_size": window},
            "adapters": [{"name": "lora", "r": 2}],
        }
    )
    model, _ = build_model(cfg, ["a"])
    seen = {}
    block = model.sam.vision_encoder.layers[0]  # a windowed block (block 1 is global)

    def count(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.setdefault("n", hidden.shape[:3].numel())

    handle = block.attn.register_forward_pre_hook(count, with_kwargs=True)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 96), None)
    handle.remove()
    return seen["n"], out, block


def test_auto_window_runs_on_the_real_tokens_only() -> None:
    padded, out, block = _tokens(None)
    unpadded, out_auto, block_auto = _tokens("auto")
    assert padded == 2 * 8 * 8  # the 6 x 6 grid padded to 8 x 8 for 4-token windows
    assert unpadded == 2 * 6 * 6  # 3-token windows tile it: only the 36 real tokens per image
    assert out.shape == out_auto.shape == (2, 1, 96, 96)
    assert block.attn.rel_pos_h.shape[0] == 7 and block_auto.attn.rel_pos_h.shape[0] == 5
    with pytest.raises(ValueError, match="window_size 9"):
        _tokens(9)
