"""Model loading: presets, segment-anything key conversion, image-size porting, load_sam sources."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import SamModel

from medpeft.backbones import hub
from medpeft.backbones.hub import BaseModelUnavailable, weights_sha256
from medpeft.backbones.sam.convert import convert_segment_anything_state_dict, original_sam_config
from medpeft.backbones.sam.loading import build_sam, load_sam
from medpeft.backbones.sam.presets import PRESET_NAMES, preset_config
from medpeft.backbones.sam.resize import port_state_dict, resize_pos_embed


def _original_tiny_spec(grid: int = 64) -> list[tuple[str, tuple[int, ...]]]:
    """Keys and shapes of segment_anything's `Sam` state dict for the sam-tiny sizes.

    Written out from the original modules (ImageEncoderViT, PromptEncoder, MaskDecoder,
    TwoWayTransformer): width 32, 2 heads (head dim 16), mlp 64, window 4, block 1 global,
    neck 32, mask_in_chans 16, decoder width 32 (cross-attention inner dim 16), iou head 32.
    """
    spec: list[tuple[str, tuple[int, ...]]] = [
        ("image_encoder.pos_embed", (1, grid, grid, 32)),
        ("image_encoder.patch_embed.proj.weight", (32, 3, 16, 16)),
        ("image_encoder.patch_embed.proj.bias", (32,)),
    ]
    for block, rel_len in ((0, 2 * 4 - 1), (1, 2 * grid - 1)):
        b = f"image_encoder.blocks.{block}"
        spec += [
            (f"{b}.norm1.weight", (32,)),
            (f"{b}.norm1.bias", (32,)),
            (f"{b}.attn.qkv.weight", (96, 32)),
            (f"{b}.attn.qkv.bias", (96,)),
            (f"{b}.attn.proj.weight", (32, 32)),
            (f"{b}.attn.proj.bias", (32,)),
            (f"{b}.attn.rel_pos_h", (rel_len, 16)),
            (f"{b}.attn.rel_pos_w", (rel_len, 16)),
            (f"{b}.norm2.weight", (32,)),
            (f"{b}.norm2.bias", (32,)),
            (f"{b}.mlp.lin1.weight", (64, 32)),
            (f"{b}.mlp.lin1.bias", (64,)),
            (f"{b}.mlp.lin2.weight", (32, 64)),
            (f"{b}.mlp.lin2.bias", (32,)),
        ]
    spec += [
        ("image_encoder.neck.0.weight", (32, 32, 1, 1)),
        ("image_encoder.neck.1.weight", (32,)),
        ("image_encoder.neck.1.bias", (32,)),
        ("image_encoder.neck.2.weight", (32, 32, 3, 3)),
        ("image_encoder.neck.3.weight", (32,)),
        ("image_encoder.neck.3.bias", (32,)),
        ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", (2, 16)),
        ("prompt_encoder.point_embeddings.0.weight", (1, 32)),
        ("prompt_encoder.point_embeddings.1.weight", (1, 32)),
        ("prompt_encoder.point_embeddings.2.weight", (1, 32)),
        ("prompt_encoder.point_embeddings.3.weight", (1, 32)),
        ("prompt_encoder.not_a_point_embed.weight", (1, 32)),
        ("prompt_encoder.mask_downscaling.0.weight", (4, 1, 2, 2)),
        ("prompt_encoder.mask_downscaling.0.bias", (4,)),
        ("prompt_encoder.mask_downscaling.1.weight", (4,)),
        ("prompt_encoder.mask_downscaling.1.bias", (4,)),
        ("prompt_encoder.mask_downscaling.3.weight", (16, 4, 2, 2)),
        ("prompt_encoder.mask_downscaling.3.bias", (16,)),
        ("prompt_encoder.mask_downscaling.4.weight", (16,)),
        ("prompt_encoder.mask_downscaling.4.bias", (16,)),
        ("prompt_encoder.mask_downscaling.6.weight", (32, 16, 1, 1)),
        ("prompt_encoder.mask_downscaling.6.bias", (32,)),
        ("prompt_encoder.no_mask_embed.weight", (1, 32)),
    ]
    attn_shapes = {"self_attn": 32, "cross_attn_token_to_image": 16, "cross_attn_image_to_token": 16}
    for layer in range(2):
        t = f"mask_decoder.transformer.layers.{layer}"
        for attn, inner in attn_shapes.items():
            for proj in ("q_proj", "k_proj", "v_proj"):
                spec += [(f"{t}.{attn}.{proj}.weight", (inner, 32)), (f"{t}.{attn}.{proj}.bias", (inner,))]
            spec += [(f"{t}.{attn}.out_proj.weight", (32, inner)), (f"{t}.{attn}.out_proj.bias", (32,))]
        for norm in ("norm1", "norm2", "norm3", "norm4"):
            spec += [(f"{t}.{norm}.weight", (32,)), (f"{t}.{norm}.bias", (32,))]
        spec += [
            (f"{t}.mlp.lin1.weight", (64, 32)),
            (f"{t}.mlp.lin1.bias", (64,)),
            (f"{t}.mlp.lin2.weight", (32, 64)),
            (f"{t}.mlp.lin2.bias", (32,)),
        ]
    f = "mask_decoder.transformer.final_attn_token_to_image"
    for proj in ("q_proj", "k_proj", "v_proj"):
        spec += [(f"{f}.{proj}.weight", (16, 32)), (f"{f}.{proj}.bias", (16,))]
    spec += [
        (f"{f}.out_proj.weight", (32, 16)),
        (f"{f}.out_proj.bias", (32,)),
        ("mask_decoder.transformer.norm_final_attn.weight", (32,)),
        ("mask_decoder.transformer.norm_final_attn.bias", (32,)),
        ("mask_decoder.iou_token.weight", (1, 32)),
        ("mask_decoder.mask_tokens.weight", (4, 32)),
        ("mask_decoder.output_upscaling.0.weight", (32, 8, 2, 2)),
        ("mask_decoder.output_upscaling.0.bias", (8,)),
        ("mask_decoder.output_upscaling.1.weight", (8,)),
        ("mask_decoder.output_upscaling.1.bias", (8,)),
        ("mask_decoder.output_upscaling.3.weight", (8, 4, 2, 2)),
        ("mask_decoder.output_upscaling.3.bias", (4,)),
    ]
    for i in range(4):
        h = f"mask_decoder.output_hypernetworks_mlps.{i}.layers"
        spec += [
            (f"{h}.0.weight", (32, 32)),
            (f"{h}.0.bias", (32,)),
            (f"{h}.1.weight", (32, 32)),
            (f"{h}.1.bias", (32,)),
            (f"{h}.2.weight", (4, 32)),
            (f"{h}.2.bias", (4,)),
        ]
    spec += [
        ("mask_decoder.iou_prediction_head.layers.0.weight", (32, 32)),
        ("mask_decoder.iou_prediction_head.layers.0.bias", (32,)),
        ("mask_decoder.iou_prediction_head.layers.1.weight", (32, 32)),
        ("mask_decoder.iou_prediction_head.layers.1.bias", (32,)),
        ("mask_decoder.iou_prediction_head.layers.2.weight", (4, 32)),
        ("mask_decoder.iou_prediction_head.layers.2.bias", (4,)),
        ("pixel_mean", (3, 1, 1)),
        ("pixel_std", (3, 1, 1)),
    ]
    return spec


def _original_tiny_state_dict(grid: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {key: 0.1 * torch.randn(shape, generator=gen) for key, shape in _original_tiny_spec(grid)}


def _logits(model: SamModel, image_size: int) -> torch.Tensor:
    pixels = torch.randn(1, 3, image_size, image_size)
    points = torch.tensor([[[[image_size / 2, image_size / 3]]]])
    with torch.no_grad():
        return model(pixel_values=pixels, input_points=points, input_labels=torch.ones(1, 1, 1)).pred_masks


# --- presets ---------------------------------------------------------------------------------


def test_presets_sizes_and_architectures() -> None:
    cfg = preset_config("sam-tiny", image_size=320)
    assert cfg.vision_config.image_size == cfg.prompt_encoder_config.image_size == 320
    assert cfg.prompt_encoder_config.image_embedding_size == 20
    vit_h = preset_config("sam-vit-huge", 1024).vision_config
    assert (vit_h.hidden_size, vit_h.num_hidden_layers, vit_h.num_attention_heads) == (1280, 32, 16)
    assert list(vit_h.global_attn_indexes) == [7, 15, 23, 31] and vit_h.window_size == 14
    with pytest.raises(ValueError, match="multiple of 16"):
        preset_config("sam-tiny", image_size=250)
    mini = SamModel(preset_config("sam-mini", 256))
    assert sum(p.numel() for p in mini.parameters()) == 4_077_056  # the number in presets.py


def test_bad_preset_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid presets: sam-tiny, sam-mini, sam-vit-base"):
        preset_config("sam-vit-small")
    with pytest.raises(ValueError, match="not a preset .*sam-tiny"):
        load_sam("sam-tinyy")


def test_preset_load_is_seeded_and_identified() -> None:
    torch.manual_seed(0)
    model, ident = load_sam("sam-tiny", image_size=64)
    torch.manual_seed(0)
    _, again = load_sam("sam-tiny", image_size=64)
    assert ident == again and ident.kind == "preset" and ident.random_init is True
    assert set(ident.to_json()) == {
        "source",
        "kind",
        "image_size",
        "sha256",
        "random_init",
        "backbone",
        "seed",
    }
    pe = model.prompt_encoder.shared_embedding.positional_embedding
    assert pe is model.shared_image_embedding.positional_embedding and pe.std() < 3
    assert torch.isfinite(_logits(model, 64)).all()


# --- key conversion ------------------------------------------------------------------------


def test_convert_original_keys_loads_strictly() -> None:
    orig = _original_tiny_state_dict(grid=64)
    cfg = original_sam_config(orig)
    vision = cfg.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (32, 2, 2)
    assert (vision.image_size, vision.window_size, list(vision.global_attn_indexes)) == (1024, 4, [1])
    assert cfg.prompt_encoder_config.image_embedding_size == 64
    assert cfg.mask_decoder_config.layer_norm_eps == 1e-5  # segment-anything's nn.LayerNorm default

    model = SamModel(cfg)
    model.load_state_dict(convert_segment_anything_state_dict(orig), strict=True)
    got = model.state_dict()
    expected = {
        "image_encoder.neck.2.weight": "vision_encoder.neck.conv2.weight",
        "image_encoder.neck.1.bias": "vision_encoder.neck.layer_norm1.bias",
        "image_encoder.patch_embed.proj.weight": "vision_encoder.patch_embed.projection.weight",
        "image_encoder.blocks.1.attn.rel_pos_h": "vision_encoder.layers.1.attn.rel_pos_h",
        "image_encoder.blocks.0.norm2.weight": "vision_encoder.layers.0.layer_norm2.weight",
        "prompt_encoder.point_embeddings.3.weight": "prompt_encoder.point_embed.3.weight",
        "prompt_encoder.mask_downscaling.4.weight": "prompt_encoder.mask_embed.layer_norm2.weight",
        "prompt_encoder.mask_downscaling.6.weight": "prompt_encoder.mask_embed.conv3.weight",
        "mask_decoder.transformer.layers.1.norm4.bias": "mask_decoder.transformer.layers.1.layer_norm4.bias",
        "mask_decoder.transformer.norm_final_attn.weight": "mask_decoder.transformer.layer_norm_final_attn.weight",
        "mask_decoder.output_upscaling.1.weight": "mask_decoder.upscale_layer_norm.weight",
        "mask_decoder.output_upscaling.3.weight": "mask_decoder.upscale_conv2.weight",
        "mask_decoder.output_hypernetworks_mlps.2.layers.0.weight": "mask_decoder.output_hypernetworks_mlps.2.proj_in.weight",
        "mask_decoder.output_hypernetworks_mlps.2.layers.1.weight": "mask_decoder.output_hypernetworks_mlps.2.layers.0.weight",
        "mask_decoder.iou_prediction_head.layers.2.bias": "mask_decoder.iou_prediction_head.proj_out.bias",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": "shared_image_embedding.positional_embedding",
    }
    for original_key, hf_key in expected.items():
        assert torch.equal(got[hf_key], orig[original_key]), (original_key, hf_key)
    pe = orig["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    assert torch.equal(got["prompt_encoder.shared_embedding.positional_embedding"], pe)  # tied key filled too


def test_convert_unwraps_and_rejects_unknown_keys() -> None:
    orig = _original_tiny_state_dict()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in orig.items()}}
    assert (
        convert_segment_anything_state_dict(wrapped).keys()
        == convert_segment_anything_state_dict(orig).keys()
    )
    with pytest.raises(ValueError, match="image_encoder.blocks.0.attn.mystery"):
        convert_segment_anything_state_dict({**orig, "image_encoder.blocks.0.attn.mystery": torch.zeros(1)})


# --- image-size porting ----------------------------------------------------------------------


def test_pos_embed_pooling_is_exact_on_constant_blocks() -> None:
    constants = torch.randint(-64, 64, (1, 16, 16, 8)) / 8  # dyadic: block sums are exact in float32
    pos = constants.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)  # constant 4x4 blocks
    assert torch.equal(resize_pos_embed(pos, 16), constants)
    flat = torch.full((1, 64, 64, 8), 0.5)
    assert torch.allclose(resize_pos_embed(flat, 20), torch.full((1, 20, 20, 8), 0.5))  # area
    assert torch.allclose(resize_pos_embed(flat[:, :16, :16], 32), torch.full((1, 32, 32, 8), 0.5))


def test_port_64_grid_weights_to_16_grid() -> None:
    src = SamModel(preset_config("sam-tiny", 1024)).state_dict()
    gen = torch.Generator().manual_seed(1)
    src = {
        k: torch.randn(v.shape, generator=gen) if "rel_pos" in k or "pos_embed" in k else v
        for k, v in src.items()
    }
    target = preset_config("sam-tiny", 256)
    ported = port_state_dict(src, target)
    assert ported["vision_encoder.layers.1.attn.rel_pos_h"].shape == (31, 16)  # global: 2*16-1
    assert torch.equal(
        ported["vision_encoder.layers.0.attn.rel_pos_w"], src["vision_encoder.layers.0.attn.rel_pos_w"]
    )
    expected_pos = F.avg_pool2d(src["vision_encoder.pos_embed"].permute(0, 3, 1, 2), 4).permute(0, 2, 3, 1)
    assert torch.allclose(ported["vision_encoder.pos_embed"], expected_pos)
    model = SamModel(target)
    model.load_state_dict(ported, strict=True)
    assert torch.isfinite(_logits(model.eval(), 256)).all()
    other_window = copy.deepcopy(target)
    other_window.vision_config.window_size = 8
    with pytest.raises(ValueError, match="window size"):
        port_state_dict(src, other_window)


# --- load_sam sources ------------------------------------------------------------------------


def test_local_directory_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(2)
    saved = build_sam(preset_config("sam-tiny", 1024))
    with torch.no_grad():
        saved.vision_encoder.pos_embed.normal_()
        for layer in saved.vision_encoder.layers:
            layer.attn.rel_pos_h.normal_()
    saved.save_pretrained(tmp_path)
    model, ident = load_sam(str(tmp_path), image_size=256)
    _, again = load_sam(str(tmp_path), image_size=256)
    assert ident == again and ident.kind == "local" and ident.random_init is False
    assert ident.sha256 == weights_sha256(model)
    assert model.vision_encoder.pos_embed.shape == (1, 16, 16, 32)
    assert model.vision_encoder.layers[1].attn.rel_pos_h.shape == (31, 16)
    assert torch.equal(
        model.vision_encoder.layers[0].attn.rel_pos_h, saved.vision_encoder.layers[0].attn.rel_pos_h
    )
    assert torch.equal(model.mask_decoder.iou_token.weight, saved.mask_decoder.iou_token.weight)
    assert torch.isfinite(_logits(model, 256)).all()


@pytest.mark.parametrize("wrap", [True, False])
def test_pth_original_format(tmp_path: Path, wrap: bool) -> None:
    orig = _original_tiny_state_dict(grid=64)
    path = tmp_path / ("medsam.pth" if wrap else "sam.pt")
    torch.save({"model": orig} if wrap else {f"module.{k}": v for k, v in orig.items()}, path)
    model, ident = load_sam(str(path), image_size=256)
    assert ident.kind == "pth" and ident.image_size == 256 and not ident.random_init
    assert torch.equal(model.vision_encoder.neck.conv2.weight, orig["image_encoder.neck.2.weight"])
    pooled = F.avg_pool2d(orig["image_encoder.pos_embed"].permute(0, 3, 1, 2), 4).permute(0, 2, 3, 1)
    assert torch.allclose(model.vision_encoder.pos_embed, pooled)
    assert torch.isfinite(_logits(model, 256)).all()


def test_missing_checkpoint_path() -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_sam("/nonexistent/medsam_vit_b.pth")


def test_unreachable_hub_id_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(
        BaseModelUnavailable,
        match=r"could not load base model 'medpeft-tests/no-such-sam' "
        r"from the hub \(offline\?\): ",
    ) as err:
        load_sam("medpeft-tests/no-such-sam")
    assert "\n" not in str(err.value) and isinstance(err.value, RuntimeError)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(BaseModelUnavailable, match="offline"):
        load_sam("medpeft-tests/no-such-sam")
    assert time.monotonic() - start < 10


def test_preset_names_are_all_buildable_configs() -> None:
    for name in PRESET_NAMES:
        cfg = preset_config(name)
        assert cfg.vision_config.image_size == 256
