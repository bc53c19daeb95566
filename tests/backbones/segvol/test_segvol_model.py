"""SegVol: forward/backward under text, box and point prompts (alone and combined, several classes); the
released checkpoint's layout (``module.``, MONAI 0.9's perceptron patch embedding and no
``norm_cross_attn``, SAM decoder names, the CLIP text tower) converted and loaded strictly; the released
text tower feeding the class prompt; the steerable side-tuning starting at the frozen model."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import ViT
from tests.clip_fixtures import save_tiny_clip

from medpeft.backbones.segvol import (
    PRESETS,
    SegVolModel,
    SegVolSegmenter,
    load_segvol,
    save_segvol,
    text_options,
)
from medpeft.backbones.segvol.convert import convert_segvol_state_dict
from medpeft.backbones.segvol.model import SegVolConfig
from medpeft.config import parse_config
from medpeft.engine.build import build_model
from medpeft.models.prompts import Prompts
from medpeft.models.text import TextEncoder, build_class_prompt

TINY = PRESETS["segvol-tiny"]


def _segmenter(labels: list[str]) -> SegVolSegmenter:
    torch.manual_seed(0)
    base = SegVolModel(TINY)
    return SegVolSegmenter(base, labels, build_class_prompt(labels, TINY.width))


def _prompts(text: bool, box: bool, point: bool) -> Prompts:
    boxes = torch.tensor([[[1.0, 2.0, 3.0, 5.0, 20.0, 25.0], [0.0, 10.0, 10.0, 7.0, 30.0, 31.0]]]).repeat(
        2, 1, 1
    )
    points = torch.tensor([[[[3.0, 12.0, 14.0], [6.0, 30.0, 1.0]]] * 2] * 2)
    labels = torch.tensor([[[1, 0], [1, -1]]] * 2)
    return Prompts(
        boxes=boxes if box else None,
        box_valid=torch.tensor([[True, False]] * 2) if box else None,
        points=points if point else None,
        point_labels=labels if point else None,
        class_ids=torch.tensor([[0, 1]] * 2),
        text=text,
    )


@pytest.mark.parametrize(
    "text,box,point", [(True, False, False), (False, True, False), (False, False, True), (True, True, True)]
)
def test_forward_backward_under_each_prompt(text: bool, box: bool, point: bool) -> None:
    model = _segmenter(["liver", "spleen"])
    volumes = torch.randn(2, 1, *TINY.roi)
    logits = model(volumes, _prompts(text, box, point))
    assert logits.shape == (2, 2, *TINY.roi) and torch.isfinite(logits).all()
    logits.pow(2).mean().backward()
    encoder = model.segvol.image_encoder.blocks[0].attn.qkv.weight
    assert encoder.grad is not None and encoder.grad.abs().sum() > 0
    assert (model.class_prompt.embedding.weight.grad is not None) == text  # the class token only with text
    # the prompt changes the answer: each class is decoded from its own prompts
    assert not torch.allclose(logits[:, 0], logits[:, 1])


def test_no_prompt_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="no prompt"):
        _segmenter(["a"])(torch.randn(1, 1, *TINY.roi), Prompts(class_ids=torch.tensor([[0]]), text=False))


def _released_layout(config: SegVolConfig, clip: dict[str, torch.Tensor]) -> tuple[dict, ViT]:
    """A state dict with the names and shapes of the released SegVol_v1.pth for ``config``: the encoder
    from MONAI's perceptron ViT (MONAI 0.9 had no ``norm_cross_attn``), SAM's original decoder names, a
    2D mask_downscaling, the CLIP text tower and dim_align; all under ``module.``, inside ``{"model": ...}``."""
    torch.manual_seed(1)
    vit = ViT(
        in_channels=1,
        img_size=config.roi,
        patch_size=config.patch,
        hidden_size=config.width,
        mlp_dim=config.mlp_dim,
        num_layers=config.layers,
        num_heads=config.heads,
        proj_type="perceptron",
        classification=False,
    )
    sd = {f"image_encoder.{k}": v for k, v in vit.state_dict().items() if "norm_cross_attn" not in k}
    w, h = config.width, config.width // 2
    grid2 = [2 * g for g in config.grid]
    shapes: dict[str, tuple[int, ...]] = {
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (3, w // 2),
        **{f"prompt_encoder.point_embeddings.{i}.weight": (1, w) for i in range(4)},
        "prompt_encoder.not_a_point_embed.weight": (1, w),
        "prompt_encoder.no_mask_embed.weight": (1, w),
        "prompt_encoder.mask_downscaling.0.weight": (4, 1, 2, 2),
        "prompt_encoder.mask_downscaling.0.bias": (4,),
        "mask_decoder.iou_token.weight": (1, w),
        "mask_decoder.mask_tokens.weight": (4, w),
        "mask_decoder.output_upscaling.0.weight": (w, w // 4, 2, 2, 2),
        "mask_decoder.output_upscaling.0.bias": (w // 4,),
        "mask_decoder.output_upscaling.1.weight": (w // 4, *grid2),
        "mask_decoder.output_upscaling.1.bias": (w // 4, *grid2),
        "mask_decoder.output_upscaling.3.weight": (w // 4, w // 8, 2, 2, 2),
        "mask_decoder.output_upscaling.3.bias": (w // 8,),
        "mask_decoder.txt_align_upscaled_embedding.weight": (w // 8, w),
        "mask_decoder.txt_align_upscaled_embedding.bias": (w // 8,),
        "mask_decoder.transformer.norm_final_attn.weight": (w,),
        "mask_decoder.transformer.norm_final_attn.bias": (w,),
        "text_encoder.dim_align.weight": (w, 32),
        "text_encoder.dim_align.bias": (w,),
    }
    t = "mask_decoder.transformer"
    for prefix, inner in [(f"{t}.final_attn_token_to_image", h)] + [
        (f"{t}.layers.{i}.{a}", w if a == "self_attn" else h)
        for i in range(config.decoder_layers)
        for a in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token")
    ]:
        for proj in "qkv":
            shapes[f"{prefix}.{proj}_proj.weight"], shapes[f"{prefix}.{proj}_proj.bias"] = (
                (inner, w),
                (inner,),
            )
        shapes[f"{prefix}.out_proj.weight"], shapes[f"{prefix}.out_proj.bias"] = (w, inner), (w,)
    for i in range(config.decoder_layers):
        for n in range(1, 5):
            shapes[f"{t}.layers.{i}.norm{n}.weight"] = shapes[f"{t}.layers.{i}.norm{n}.bias"] = (w,)
        shapes[f"{t}.layers.{i}.mlp.lin1.weight"], shapes[f"{t}.layers.{i}.mlp.lin1.bias"] = (
            (config.decoder_mlp_dim, w),
            (config.decoder_mlp_dim,),
        )
        shapes[f"{t}.layers.{i}.mlp.lin2.weight"], shapes[f"{t}.layers.{i}.mlp.lin2.bias"] = (
            (w, config.decoder_mlp_dim),
            (w,),
        )
    heads = {f"output_hypernetworks_mlps.{i}": (w, w, w // 8) for i in range(4)}
    heads["iou_prediction_head"] = (w, config.iou_hidden, 4)
    for head, (d_in, hidden, d_out) in heads.items():
        dims = [d_in, hidden, hidden, d_out]
        for j in range(3):
            shapes[f"mask_decoder.{head}.layers.{j}.weight"] = (dims[j + 1], dims[j])
            shapes[f"mask_decoder.{head}.layers.{j}.bias"] = (dims[j + 1],)
    sd.update({k: torch.randn(s) * 0.1 for k, s in shapes.items()})
    sd.update(
        {f"text_encoder.clip_text_model.text_model.{k}": v for k, v in clip.items()}
    )  # transformers 4.x
    sd["text_encoder.clip_text_model.text_model.embeddings.position_ids"] = torch.arange(64)[None]
    return {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, vit


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[str, dict[str, torch.Tensor]]:
    from transformers import CLIPTextModel

    path = save_tiny_clip(tmp_path_factory.mktemp("clip"))
    return str(path), CLIPTextModel.from_pretrained(path).state_dict()


def test_released_checkpoint_converts_and_loads_strictly(tiny_clip, tmp_path) -> None:
    clip_dir, clip = tiny_clip
    checkpoint, vit = _released_layout(TINY, clip)
    state, text = convert_segvol_state_dict(checkpoint, TINY)
    model = SegVolModel(TINY)
    model.load_state_dict(state, strict=True)  # every key mapped, none missing
    # the perceptron Linear became the same function as a Conv3d
    x = torch.randn(2, 1, *TINY.roi)
    with torch.no_grad():
        expected, _ = vit(x)
        got, _ = model.image_encoder(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(
        state["mask_decoder.upscale_layer_norm.weight"],
        checkpoint["model"]["module.mask_decoder.output_upscaling.1.weight"],
    )
    assert "dim_align.weight" in text and not any("position_ids" in k for k in text)
    # the released CLIP weights drive the text prompt; dim_align becomes the class prompt's projection
    model.released_text = text
    options = text_options(model)
    assert options["projection"] is False
    encoder = TextEncoder(clip_dir, template="A computerized tomography of a {}.", **options)
    assert torch.equal(
        encoder.model.embeddings.token_embedding.weight, clip["embeddings.token_embedding.weight"]
    )
    # the file route: a .pth as released (torch.save of {"model": ..., "epoch": ...}), read tensor-only
    from medpeft.backbones.segvol import _from_release

    path = tmp_path / "SegVol_v1.pth"
    torch.save(checkpoint, path)
    loaded = _from_release(path, TINY)
    assert torch.equal(
        loaded.image_encoder.patch_embedding.patch_embeddings.weight,
        state["image_encoder.patch_embedding.patch_embeddings.weight"],
    )
    assert set(loaded.released_text) == set(text)
    torch.save({"model": {"module.image_encoder.norm.weight": torch.ones(2)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a released SegVol checkpoint"):
        _from_release(tmp_path / "other.pth", TINY)
    bad = dict(checkpoint["model"], **{"module.mask_decoder.unknown.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unrecognised SegVol checkpoint keys"):
        convert_segvol_state_dict({"model": bad}, TINY)


def test_saved_folder_round_trips_and_sizes_are_checked(tmp_path) -> None:
    model, identity = load_segvol("segvol-tiny", 32)
    assert identity.kind == "preset" and model.config.roi == (8, 32, 32)
    save_segvol(model, tmp_path / "base")
    again, _ = load_segvol(str(tmp_path / "base"), 32)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="takes \\(8, 32, 32\\) volumes"):
        load_segvol(str(tmp_path / "base"), 64)


def test_steerable_side_tuning_starts_at_the_frozen_model() -> None:
    labels = ["a", "b"]
    plain = parse_config(
        {"model": {"base": "segvol-tiny", "image_size": 32}, "adapters": [{"name": "decoder"}]}
    )
    side = parse_config(
        {
            "model": {"base": "segvol-tiny", "image_size": 32},
            "adapters": [
                {"name": "steerable", "channels": 8},
                {"name": "lora", "targets": "attn_out", "r": 2},
            ],
        }
    )
    a, _ = build_model(plain, labels)
    b, _ = build_model(side, labels)
    volumes, prompts = torch.randn(1, 1, *TINY.roi), _prompts(False, True, False)
    prompts = Prompts(boxes=prompts.boxes[:1], box_valid=prompts.box_valid[:1], text=False)
    with torch.no_grad():
        torch.testing.assert_close(b(volumes, prompts), a(volumes, prompts))
    trainable = {n for n, p in b.named_parameters() if p.requires_grad}
    assert any(".radial." in n for n in trainable) and any(".adapter." in n for n in trainable)
    assert any("out_proj.lora_A" in n for n in trainable)
    assert not any("frozen" in n or ".qkv." in n for n in trainable)
    assert set(b.method_params) == {"steerable", "lora"}
    radial = b.segvol.image_encoder.patch_embedding.patch_embeddings.radial
    assert b.method_params["steerable"] == radial.weight.numel() + radial.bias.numel() + (32 + 8) * 32 + 32


def test_svd_reaches_the_conv3d_patch_embedding_and_merges_exactly(tmp_path) -> None:
    from medpeft.adapters.svd import SVDConv
    from medpeft.engine.build import merge_methods

    cfg = parse_config(
        {
            "model": {"base": "segvol-tiny", "image_size": 32},
            "adapters": [{"name": "svd", "include_patch_embed": True}],
        }
    )
    model, _ = build_model(cfg, ["a", "b"])
    patch = model.segvol.image_encoder.patch_embedding.patch_embeddings
    assert isinstance(patch, SVDConv) and patch.scale.requires_grad and patch.scale.numel() == TINY.width
    with torch.no_grad():
        for p in (p for p in model.parameters() if p.requires_grad):
            p.add_(0.05 * torch.randn_like(p))
        volumes, prompts = torch.randn(1, 1, *TINY.roi), _prompts(False, True, False)
        prompts = Prompts(boxes=prompts.boxes[:1], box_valid=prompts.box_valid[:1], text=False)
        before = model(volumes, prompts)
        merge_methods(model, cfg)
        assert isinstance(model.segvol.image_encoder.patch_embedding.patch_embeddings, torch.nn.Conv3d)
        torch.testing.assert_close(model(volumes, prompts), before, atol=1e-5, rtol=1e-5)
