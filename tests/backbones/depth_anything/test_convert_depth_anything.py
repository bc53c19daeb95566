"""Original Depth-Anything-V2 checkpoint layout -> transformers DepthAnythingForDepthEstimation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

from medpeft.backbones.depth_anything.convert import (
    check_size,
    convert_depth_anything_state_dict,
    depth_anything_config_from_original,
    unwrap_checkpoint,
)

TINY_BLOCKS = [0, 1, 2, 3]  # original 0-based intermediate_layer_idx for the tiny model


def tiny_config(depth_type: str = "relative", use_mask_token: bool = True) -> DepthAnythingConfig:
    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=4,
        image_size=56,
        patch_size=14,
        out_indices=[1, 2, 3, 4],  # stage k = output of block k-1
        apply_layernorm=True,
        reshape_hidden_states=False,
        use_mask_token=use_mask_token,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 24, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type=depth_type,
        max_depth=3 if depth_type == "metric" else 1,
    )


def original_state_dict(cfg: DepthAnythingConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the original DepthAnythingV2 key names, shapes from the config."""
    bc = cfg.backbone_config
    d, p, m = bc.hidden_size, bc.patch_size, bc.hidden_size * bc.mlp_ratio
    n_tokens = (bc.image_size // p) ** 2 + 1
    oc, f, h = cfg.neck_hidden_sizes, cfg.fusion_hidden_size, cfg.head_hidden_size
    shapes: dict[str, tuple[int, ...]] = {
        "pretrained.cls_token": (1, 1, d),
        "pretrained.pos_embed": (1, n_tokens, d),
        "pretrained.mask_token": (1, d),
        "pretrained.patch_embed.proj.weight": (d, 3, p, p),
        "pretrained.patch_embed.proj.bias": (d,),
        "pretrained.norm.weight": (d,),
        "pretrained.norm.bias": (d,),
    }
    for i in range(bc.num_hidden_layers):
        b = f"pretrained.blocks.{i}."
        shapes.update(
            {
                b + "norm1.weight": (d,),
                b + "norm1.bias": (d,),
                b + "attn.qkv.weight": (3 * d, d),
                b + "attn.qkv.bias": (3 * d,),
                b + "attn.proj.weight": (d, d),
                b + "attn.proj.bias": (d,),
                b + "ls1.gamma": (d,),
                b + "norm2.weight": (d,),
                b + "norm2.bias": (d,),
                b + "mlp.fc1.weight": (m, d),
                b + "mlp.fc1.bias": (m,),
                b + "mlp.fc2.weight": (d, m),
                b + "mlp.fc2.bias": (d,),
                b + "ls2.gamma": (d,),
            }
        )
    head = "depth_head."
    for i in range(4):
        shapes[f"{head}projects.{i}.weight"] = (oc[i], d, 1, 1)
        shapes[f"{head}projects.{i}.bias"] = (oc[i],)
        shapes[f"{head}scratch.layer{i + 1}_rn.weight"] = (f, oc[i], 3, 3)
    for i, k in ((0, 4), (1, 2), (3, 3)):  # ConvTranspose x4, ConvTranspose x2, (identity), Conv stride 2
        shapes[f"{head}resize_layers.{i}.weight"] = (oc[i], oc[i], k, k)
        shapes[f"{head}resize_layers.{i}.bias"] = (oc[i],)
    for n in range(1, 5):
        r = f"{head}scratch.refinenet{n}."
        shapes[r + "out_conv.weight"] = (f, f, 1, 1)
        shapes[r + "out_conv.bias"] = (f,)
        for unit in (1, 2):
            for conv in (1, 2):
                shapes[f"{r}resConfUnit{unit}.conv{conv}.weight"] = (f, f, 3, 3)
                shapes[f"{r}resConfUnit{unit}.conv{conv}.bias"] = (f,)
    shapes.update(
        {
            head + "scratch.output_conv1.weight": (f // 2, f, 3, 3),
            head + "scratch.output_conv1.bias": (f // 2,),
            head + "scratch.output_conv2.0.weight": (h, f // 2, 3, 3),
            head + "scratch.output_conv2.0.bias": (h,),
            head + "scratch.output_conv2.2.weight": (1, h, 1, 1),
            head + "scratch.output_conv2.2.bias": (1,),
        }
    )
    g = torch.Generator().manual_seed(seed)
    return {k: 0.3 * torch.randn(s, generator=g) for k, s in shapes.items()}


def reference_depth(sd: dict[str, torch.Tensor], cfg: DepthAnythingConfig, x: torch.Tensor) -> torch.Tensor:
    """Independent functional forward of the ORIGINAL layout (DINOv2 + DPT head), read off its key names."""
    bc = cfg.backbone_config
    d, heads, p = bc.hidden_size, bc.num_attention_heads, bc.patch_size
    batch = x.shape[0]
    tok = F.conv2d(
        x, sd["pretrained.patch_embed.proj.weight"], sd["pretrained.patch_embed.proj.bias"], stride=p
    )
    gh, gw = tok.shape[2:]
    tok = tok.flatten(2).transpose(1, 2)
    tok = torch.cat([sd["pretrained.cls_token"].expand(batch, -1, -1), tok], 1) + sd["pretrained.pos_embed"]

    def ln(t, name):
        return F.layer_norm(t, (d,), sd[name + ".weight"], sd[name + ".bias"], eps=1e-6)

    feats = []
    for i in range(bc.num_hidden_layers):
        b = f"pretrained.blocks.{i}."
        qkv = F.linear(ln(tok, b + "norm1"), sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"])
        q, k, v = qkv.reshape(batch, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, -1, d)
        tok = tok + sd[b + "ls1.gamma"] * F.linear(att, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        hid = F.gelu(F.linear(ln(tok, b + "norm2"), sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]))
        tok = tok + sd[b + "ls2.gamma"] * F.linear(hid, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        if i in TINY_BLOCKS:
            feats.append(ln(tok, "pretrained.norm")[:, 1:].transpose(1, 2).reshape(batch, d, gh, gw))

    def conv(t, name, **kw):
        return F.conv2d(t, sd[name + ".weight"], sd.get(name + ".bias"), **kw)

    layers = []
    for i, t in enumerate(feats):
        t = conv(t, f"depth_head.projects.{i}")
        w, bias = sd.get(f"depth_head.resize_layers.{i}.weight"), sd.get(f"depth_head.resize_layers.{i}.bias")
        if i in (0, 1):
            t = F.conv_transpose2d(t, w, bias, stride=4 if i == 0 else 2)
        elif i == 3:
            t = F.conv2d(t, w, bias, stride=2, padding=1)
        layers.append(conv(t, f"depth_head.scratch.layer{i + 1}_rn", padding=1))

    def unit(t, name):
        inner = conv(F.relu(t), name + ".conv1", padding=1)
        return t + conv(F.relu(inner), name + ".conv2", padding=1)

    def refine(n, t, skip=None, size=None):
        r = f"depth_head.scratch.refinenet{n}"
        if skip is not None:
            t = t + unit(skip, r + ".resConfUnit1")
        t = unit(t, r + ".resConfUnit2")
        scale = {"size": tuple(size)} if size is not None else {"scale_factor": 2}
        t = F.interpolate(t, **scale, mode="bilinear", align_corners=True)
        return conv(t, r + ".out_conv")

    l1, l2, l3, l4 = layers
    path = refine(4, l4, size=l3.shape[2:])
    path = refine(3, path, l3, size=l2.shape[2:])
    path = refine(2, path, l2, size=l1.shape[2:])
    path = refine(1, path, l1)
    out = conv(path, "depth_head.scratch.output_conv1", padding=1)
    out = F.interpolate(out, (gh * p, gw * p), mode="bilinear", align_corners=True)
    out = F.relu(conv(out, "depth_head.scratch.output_conv2.0", padding=1))
    out = conv(out, "depth_head.scratch.output_conv2.2")
    out = torch.sigmoid(out) * cfg.max_depth if cfg.depth_estimation_type == "metric" else F.relu(out)
    return out.squeeze(1)


def converted_model(cfg: DepthAnythingConfig, sd: dict[str, torch.Tensor]) -> DepthAnythingForDepthEstimation:
    model = DepthAnythingForDepthEstimation(cfg).eval()
    model.load_state_dict(convert_depth_anything_state_dict(sd, cfg), strict=True)
    return model


def test_converted_state_dict_loads_strictly_with_values_in_place():
    cfg = tiny_config()
    sd = original_state_dict(cfg)
    new = convert_depth_anything_state_dict(sd, cfg)
    converted_model(cfg, sd)  # strict load: no missing / unexpected keys, all shapes agree

    qkv_w, qkv_b = sd["pretrained.blocks.0.attn.qkv.weight"], sd["pretrained.blocks.0.attn.qkv.bias"]
    layer0 = "backbone.encoder.layer.0.attention."
    assert torch.equal(new[layer0 + "q_proj.weight"], qkv_w[:32])
    assert torch.equal(new[layer0 + "k_proj.weight"], qkv_w[32:64])
    assert torch.equal(new[layer0 + "v_proj.bias"], qkv_b[64:])
    assert torch.equal(new[layer0 + "o_proj.weight"], sd["pretrained.blocks.0.attn.proj.weight"])
    assert torch.equal(
        new["backbone.encoder.layer.3.layer_scale2.lambda1"], sd["pretrained.blocks.3.ls2.gamma"]
    )
    assert torch.equal(new["backbone.embeddings.position_embeddings"], sd["pretrained.pos_embed"])
    # refinenet4 handles the deepest features first, which transformers calls fusion layer 0
    assert torch.equal(
        new["neck.fusion_stage.layers.0.projection.weight"],
        sd["depth_head.scratch.refinenet4.out_conv.weight"],
    )
    assert torch.equal(
        new["neck.fusion_stage.layers.3.residual_layer1.convolution2.bias"],
        sd["depth_head.scratch.refinenet1.resConfUnit1.conv2.bias"],
    )
    assert torch.equal(new["neck.convs.2.weight"], sd["depth_head.scratch.layer3_rn.weight"])
    assert torch.equal(new["head.conv3.weight"], sd["depth_head.scratch.output_conv2.2.weight"])


@pytest.mark.parametrize("depth_type", ["relative", "metric"])
def test_converted_forward_matches_original_layout(depth_type):
    cfg = tiny_config(depth_type)
    sd = original_state_dict(cfg, seed=1)
    model = converted_model(cfg, sd)
    x = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        depth = model(pixel_values=x).predicted_depth
        expected = reference_depth(sd, cfg, x)
    assert depth.shape == (1, 56, 56)
    assert expected.abs().sum() > 0  # not an all-zero ReLU output
    torch.testing.assert_close(depth, expected, atol=1e-4, rtol=1e-4)


def test_mask_token_dropped_when_target_has_none():
    cfg = tiny_config(use_mask_token=False)
    sd = original_state_dict(cfg)
    assert "backbone.embeddings.mask_token" not in convert_depth_anything_state_dict(sd, cfg)
    converted_model(cfg, sd)


def test_unknown_key_raises_naming_it():
    cfg = tiny_config()
    sd = original_state_dict(cfg)
    sd["depth_head.readout_projects.0.0.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"depth_head\.readout_projects\.0\.0\.weight"):
        convert_depth_anything_state_dict(sd, cfg)


def test_unwrap_checkpoint_handles_wrappers_and_module_prefix():
    t = torch.zeros(1)
    plain = {"pretrained.cls_token": t}
    assert unwrap_checkpoint(plain) == plain
    assert unwrap_checkpoint({"model": {"module.pretrained.cls_token": t}}) == plain
    assert unwrap_checkpoint({"state_dict": plain, "epoch": 3}) == plain


def test_check_size():
    assert check_size(518) == 518
    with pytest.raises(ValueError, match="multiple of 14") as err:
        check_size(250)
    assert "238" in str(err.value) and "252" in str(err.value)


def test_config_from_original():
    vits = depth_anything_config_from_original("vits")
    bc = vits.backbone_config
    assert (bc.hidden_size, bc.num_hidden_layers, bc.num_attention_heads) == (384, 12, 6)
    assert bc.out_indices == [3, 6, 9, 12] and bc.image_size == 518 and bc.patch_size == 14
    assert list(vits.neck_hidden_sizes) == [48, 96, 192, 384] and vits.fusion_hidden_size == 64
    assert vits.depth_estimation_type == "relative" and vits.max_depth == 1

    vitl = depth_anything_config_from_original("vitl", metric=True, max_depth=80)
    assert vitl.backbone_config.out_indices == [5, 12, 18, 24] and vitl.reassemble_hidden_size == 1024
    assert (vitl.depth_estimation_type, vitl.max_depth, vitl.fusion_hidden_size) == ("metric", 80, 256)
    assert depth_anything_config_from_original("vitb", metric=True).max_depth == 20

    with pytest.raises(ValueError, match="vits, vitb, vitl"):
        depth_anything_config_from_original("vitg")
