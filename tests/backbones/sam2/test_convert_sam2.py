"""Tests for the hand-written original-SAM2 -> transformers.Sam2Model checkpoint converter."""

from __future__ import annotations

import pytest
import torch
from transformers import Sam2Config, Sam2HieraDetConfig, Sam2Model, Sam2VisionConfig

from medpeft.backbones.sam2.convert import (
    convert_sam2_state_dict,
    sam2_config_from_original,
    unwrap_checkpoint,
)

# Tiny geometry shared by the config and the hand-written original layout below.
HIDDEN = 16
BLOCKS = [1, 1, 2, 1]
DIMS = [16, 32, 64, 128]
FPN = 32  # neck d_model == prompt/decoder hidden size
MLP_DIM = 64
POS_BKG = [4, 4]
WINDOW0 = 4


def tiny_config() -> Sam2Config:
    backbone = Sam2HieraDetConfig(
        hidden_size=HIDDEN,
        blocks_per_stage=BLOCKS,
        embed_dim_per_stage=DIMS,
        num_attention_heads_per_stage=[1, 2, 4, 8],  # original Hiera doubles heads per stage
        window_size_per_stage=[WINDOW0, 4, 4, 4],
        global_attention_blocks=[3],  # not the first block of a stage
        window_positional_embedding_background_size=POS_BKG,
        image_size=[128, 128],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=DIMS[::-1],
        backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
        fpn_hidden_size=FPN,
    )
    return Sam2Config(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=FPN, image_size=128, patch_size=16),
        mask_decoder_config=dict(
            hidden_size=FPN, mlp_dim=MLP_DIM, num_attention_heads=2, iou_head_hidden_dim=32
        ),
    )


def _linear(prefix: str, out_dim: int, in_dim: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (out_dim, in_dim), f"{prefix}.bias": (out_dim,)}


def _norm(prefix: str, dim: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (dim,), f"{prefix}.bias": (dim,)}


def original_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of an original SAM2Base checkpoint (facebookresearch/sam2 names) for the tiny config."""
    s: dict[str, tuple[int, ...]] = {
        "image_encoder.trunk.pos_embed": (1, HIDDEN, *POS_BKG),
        "image_encoder.trunk.pos_embed_window": (1, HIDDEN, WINDOW0, WINDOW0),
        "image_encoder.trunk.patch_embed.proj.weight": (HIDDEN, 3, 7, 7),
        "image_encoder.trunk.patch_embed.proj.bias": (HIDDEN,),
    }
    block, dim_in = 0, HIDDEN
    for dim_out, n_blocks in zip(DIMS, BLOCKS, strict=True):
        for _ in range(n_blocks):
            b = f"image_encoder.trunk.blocks.{block}"
            s |= _norm(f"{b}.norm1", dim_in)
            s |= _linear(f"{b}.attn.qkv", 3 * dim_out, dim_in)
            s |= _linear(f"{b}.attn.proj", dim_out, dim_out)
            s |= _norm(f"{b}.norm2", dim_out)
            s |= _linear(f"{b}.mlp.layers.0", 4 * dim_out, dim_out)
            s |= _linear(f"{b}.mlp.layers.1", dim_out, 4 * dim_out)
            if dim_in != dim_out:
                s |= _linear(f"{b}.proj", dim_out, dim_in)
            block, dim_in = block + 1, dim_out
    for i, ch in enumerate(DIMS[::-1]):
        s |= {
            f"image_encoder.neck.convs.{i}.conv.weight": (FPN, ch, 1, 1),
            f"image_encoder.neck.convs.{i}.conv.bias": (FPN,),
        }

    pe = "sam_prompt_encoder"
    s[f"{pe}.pe_layer.positional_encoding_gaussian_matrix"] = (2, FPN // 2)
    s |= {f"{pe}.point_embeddings.{i}.weight": (1, FPN) for i in range(4)}
    s[f"{pe}.not_a_point_embed.weight"] = (1, FPN)
    s[f"{pe}.no_mask_embed.weight"] = (1, FPN)
    s |= {f"{pe}.mask_downscaling.0.weight": (4, 1, 2, 2), f"{pe}.mask_downscaling.0.bias": (4,)}
    s |= _norm(f"{pe}.mask_downscaling.1", 4)
    s |= {f"{pe}.mask_downscaling.3.weight": (16, 4, 2, 2), f"{pe}.mask_downscaling.3.bias": (16,)}
    s |= _norm(f"{pe}.mask_downscaling.4", 16)
    s |= {f"{pe}.mask_downscaling.6.weight": (FPN, 16, 1, 1), f"{pe}.mask_downscaling.6.bias": (FPN,)}

    md = "sam_mask_decoder"
    s |= {
        f"{md}.iou_token.weight": (1, FPN),
        f"{md}.mask_tokens.weight": (4, FPN),
        f"{md}.obj_score_token.weight": (1, FPN),
    }

    def attention(prefix: str, internal: int) -> None:
        for proj in ("q_proj", "k_proj", "v_proj"):
            s.update(_linear(f"{prefix}.{proj}", internal, FPN))
        s.update(_linear(f"{prefix}.out_proj", FPN, internal))

    for layer in range(2):
        t = f"{md}.transformer.layers.{layer}"
        attention(f"{t}.self_attn", FPN)
        attention(f"{t}.cross_attn_token_to_image", FPN // 2)
        attention(f"{t}.cross_attn_image_to_token", FPN // 2)
        for n in range(1, 5):
            s |= _norm(f"{t}.norm{n}", FPN)
        s |= _linear(f"{t}.mlp.layers.0", MLP_DIM, FPN) | _linear(f"{t}.mlp.layers.1", FPN, MLP_DIM)
    attention(f"{md}.transformer.final_attn_token_to_image", FPN // 2)
    s |= _norm(f"{md}.transformer.norm_final_attn", FPN)
    s |= {
        f"{md}.output_upscaling.0.weight": (FPN, FPN // 4, 2, 2),
        f"{md}.output_upscaling.0.bias": (FPN // 4,),
    }
    s |= _norm(f"{md}.output_upscaling.1", FPN // 4)
    s |= {
        f"{md}.output_upscaling.3.weight": (FPN // 4, FPN // 8, 2, 2),
        f"{md}.output_upscaling.3.bias": (FPN // 8,),
    }
    s |= {f"{md}.conv_s0.weight": (FPN // 8, FPN, 1, 1), f"{md}.conv_s0.bias": (FPN // 8,)}
    s |= {f"{md}.conv_s1.weight": (FPN // 4, FPN, 1, 1), f"{md}.conv_s1.bias": (FPN // 4,)}
    heads = {f"output_hypernetworks_mlps.{i}": FPN // 8 for i in range(4)}
    heads |= {"iou_prediction_head": 4, "pred_obj_score_head": 1}
    for head, out_dim in heads.items():
        s |= _linear(f"{md}.{head}.layers.0", 32, FPN) | _linear(f"{md}.{head}.layers.1", 32, 32)
        s |= _linear(f"{md}.{head}.layers.2", out_dim, 32)
    s["no_mem_embed"] = (1, 1, FPN)
    return s


# Video/memory keys that the image-only model must silently drop.
MEMORY_SHAPES: dict[str, tuple[int, ...]] = {
    "memory_attention.layers.0.self_attn.q_proj.weight": (FPN, FPN),
    "memory_encoder.mask_downsampler.encoder.0.weight": (4, 1, 3, 3),
    "maskmem_tpos_enc": (7, 1, 1, 8),
    "no_mem_pos_enc": (1, 1, FPN),
    "no_obj_ptr": (1, FPN),
    "no_obj_embed_spatial": (1, 8),
    "obj_ptr_proj.layers.0.weight": (FPN, FPN),
    "obj_ptr_tpos_proj.weight": (8, FPN),
    "mask_downsample.weight": (1, 1, 4, 4),
}


@pytest.fixture(scope="module")
def original_sd() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = original_shapes() | MEMORY_SHAPES
    return {k: torch.randn(shape, generator=gen) for k, shape in shapes.items()}


@pytest.fixture(scope="module")
def converted(original_sd) -> dict[str, torch.Tensor]:
    return convert_sam2_state_dict(original_sd)


def test_converted_loads_strictly(converted):
    model = Sam2Model(tiny_config())
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(converted) == set(model.state_dict())
    loaded = model.state_dict()
    assert torch.equal(
        loaded["mask_decoder.iou_prediction_head.proj_out.weight"],
        converted["mask_decoder.iou_prediction_head.proj_out.weight"],
    )


def test_memory_keys_dropped(converted):
    assert not any(
        k.startswith(("memory_", "maskmem", "obj_ptr", "mask_downsample", "no_obj")) for k in converted
    )
    assert "no_mem_pos_enc" not in converted


@pytest.mark.parametrize(
    ("original", "target"),
    [
        ("image_encoder.trunk.pos_embed_window", "vision_encoder.backbone.pos_embed_window"),
        (
            "image_encoder.trunk.patch_embed.proj.weight",
            "vision_encoder.backbone.patch_embed.projection.weight",
        ),
        ("image_encoder.trunk.blocks.4.attn.qkv.weight", "vision_encoder.backbone.blocks.4.attn.qkv.weight"),
        ("image_encoder.trunk.blocks.4.proj.bias", "vision_encoder.backbone.blocks.4.proj.bias"),
        ("image_encoder.trunk.blocks.2.norm1.weight", "vision_encoder.backbone.blocks.2.layer_norm1.weight"),
        (
            "image_encoder.trunk.blocks.3.mlp.layers.0.weight",
            "vision_encoder.backbone.blocks.3.mlp.proj_in.weight",
        ),
        (
            "image_encoder.trunk.blocks.3.mlp.layers.1.bias",
            "vision_encoder.backbone.blocks.3.mlp.proj_out.bias",
        ),
        ("image_encoder.neck.convs.3.conv.weight", "vision_encoder.neck.convs.3.weight"),
        ("sam_prompt_encoder.mask_downscaling.4.weight", "prompt_encoder.mask_embed.layer_norm2.weight"),
        ("sam_prompt_encoder.mask_downscaling.6.weight", "prompt_encoder.mask_embed.conv3.weight"),
        ("sam_mask_decoder.output_upscaling.1.bias", "mask_decoder.upscale_layer_norm.bias"),
        ("sam_mask_decoder.output_upscaling.3.weight", "mask_decoder.upscale_conv2.weight"),
        (
            "sam_mask_decoder.transformer.layers.1.cross_attn_image_to_token.out_proj.weight",
            "mask_decoder.transformer.layers.1.cross_attn_image_to_token.o_proj.weight",
        ),
        (
            "sam_mask_decoder.transformer.layers.0.norm4.bias",
            "mask_decoder.transformer.layers.0.layer_norm4.bias",
        ),
        (
            "sam_mask_decoder.transformer.norm_final_attn.weight",
            "mask_decoder.transformer.layer_norm_final_attn.weight",
        ),
        (
            "sam_mask_decoder.transformer.layers.0.mlp.layers.1.weight",
            "mask_decoder.transformer.layers.0.mlp.proj_out.weight",
        ),
        (
            "sam_mask_decoder.output_hypernetworks_mlps.2.layers.1.weight",
            "mask_decoder.output_hypernetworks_mlps.2.layers.0.weight",
        ),
        (
            "sam_mask_decoder.iou_prediction_head.layers.2.bias",
            "mask_decoder.iou_prediction_head.proj_out.bias",
        ),
        (
            "sam_mask_decoder.pred_obj_score_head.layers.0.weight",
            "mask_decoder.pred_obj_score_head.proj_in.weight",
        ),
        ("sam_mask_decoder.obj_score_token.weight", "mask_decoder.obj_score_token.weight"),
        ("sam_mask_decoder.conv_s1.weight", "mask_decoder.conv_s1.weight"),
        ("no_mem_embed", "no_memory_embedding"),
    ],
)
def test_spot_check_mapping(original_sd, converted, original, target):
    assert torch.equal(converted[target], original_sd[original])


def test_point_embeddings_stacked_and_pe_copied(original_sd, converted):
    point_embed = converted["prompt_encoder.point_embed.weight"]
    assert point_embed.shape == (4, FPN)
    for i in range(4):
        assert torch.equal(point_embed[i], original_sd[f"sam_prompt_encoder.point_embeddings.{i}.weight"][0])
    gaussian = original_sd["sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    assert torch.equal(converted["prompt_encoder.shared_embedding.positional_embedding"], gaussian)
    assert torch.equal(converted["shared_image_embedding.positional_embedding"], gaussian)


def test_unknown_key_raises(original_sd):
    bad = dict(original_sd) | {"sam_mask_decoder.mystery_head.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="sam_mask_decoder.mystery_head.weight"):
        convert_sam2_state_dict(bad)


def test_unwrap_checkpoint():
    sd = {"a.weight": torch.zeros(1), "b": torch.ones(2)}
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    for obj in (sd, {"model": sd}, {"state_dict": prefixed}, {"model": prefixed}, prefixed):
        out = unwrap_checkpoint(obj)
        assert out.keys() == sd.keys()
        assert all(out[k] is sd[k] for k in sd)


def test_real_variant_configs():
    tiny = sam2_config_from_original("tiny")
    default = Sam2Config()  # transformers' defaults are SAM2.1 hiera-tiny at 1024
    for field in (
        "blocks_per_stage",
        "embed_dim_per_stage",
        "num_attention_heads_per_stage",
        "window_size_per_stage",
    ):
        assert getattr(tiny.vision_config.backbone_config, field) == getattr(
            default.vision_config.backbone_config, field
        )
    assert tiny.vision_config.backbone_feature_sizes == default.vision_config.backbone_feature_sizes
    large = sam2_config_from_original("large", 512)
    assert large.vision_config.backbone_channel_list == [1152, 576, 288, 144]
    assert large.vision_config.backbone_config.window_size_per_stage == [8, 4, 16, 8]
    assert large.vision_config.backbone_feature_sizes == [[128, 128], [64, 64], [32, 32]]
    assert large.prompt_encoder_config.image_size == 512
    bplus = sam2_config_from_original("base_plus")
    assert bplus.vision_config.backbone_config.window_positional_embedding_background_size == [14, 14]
    assert bplus.vision_config.backbone_config.num_attention_heads_per_stage == [2, 4, 8, 16]


def test_tiny_config_forward_256():
    torch.manual_seed(0)
    model = Sam2Model(sam2_config_from_original("tiny", 256)).eval()
    with torch.no_grad():
        out = model.get_image_features(torch.randn(1, 3, 256, 256))
    # flattened (HW, batch, C); levels 0/1 already went through conv_s0 / conv_s1
    assert [tuple(f.shape) for f in out.fpn_hidden_states] == [
        (64 * 64, 1, 32),
        (32 * 32, 1, 64),
        (16 * 16, 1, 256),
    ]


def test_bad_image_size_names_nearest():
    with pytest.raises(ValueError, match=r"224.*256"):
        sam2_config_from_original("tiny", 250)
    with pytest.raises(ValueError, match="unknown SAM2.1 variant"):
        sam2_config_from_original("huge")
