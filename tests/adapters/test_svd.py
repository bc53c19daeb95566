"""S-SAM building blocks: singular-value tuning, LayerNorm / bias / pos_embed unfreezing."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

from medpeft.adapters.norms import BiasConfig, LayerNormConfig, apply_bias, apply_layernorm
from medpeft.adapters.pos_embed import PosEmbedConfig, apply_pos_embed
from medpeft.adapters.registry import get_method
from medpeft.adapters.svd import (
    SVDConfig,
    SVDConv,
    SVDLinear,
    apply_svd,
    merge_svd,
    set_svd_mode,
    svd_layers,
    svd_penalty,
    svd_regularizer,
)
from medpeft.backbones.sam.segmenter import SAM_TARGETS
from medpeft.engine.report import trainable_share

ATOL = 1e-5


def _tiny_sam(use_abs_pos: bool = True) -> SamModel:
    vision = SamVisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_dim=64,
        image_size=64,
        patch_size=16,
        window_size=2,
        global_attn_indexes=[1],
        output_channels=32,
        use_abs_pos=use_abs_pos,
    )
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=64, patch_size=16)
    decoder = SamMaskDecoderConfig(hidden_size=32, num_hidden_layers=2, mlp_dim=64, iou_head_hidden_dim=32)
    torch.manual_seed(0)
    return SamModel(
        SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    )


class Segmenter(nn.Module):
    """The engine hands methods a module that contains the SamModel somewhere, with SAM's target table."""

    target_table = SAM_TARGETS

    def __init__(self, sam: SamModel) -> None:
        super().__init__()
        self.sam = sam


@pytest.fixture(scope="module")
def base_sam() -> SamModel:
    return _tiny_sam().eval()


@pytest.fixture
def model(base_sam: SamModel) -> Segmenter:
    """A fresh, fully frozen copy (as the engine prepares it before applying methods)."""
    return Segmenter(copy.deepcopy(base_sam)).requires_grad_(False)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _embed(model: Segmenter, pixels: torch.Tensor) -> torch.Tensor:
    return model.sam.vision_encoder(pixels)[0]


def _trainable(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _perturb(layer: SVDLinear | SVDConv, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.scale.copy_(1 + 0.5 * torch.randn(layer.scale.shape, generator=g))
        layer.shift.copy_(0.3 * torch.randn(layer.shift.shape, generator=g))


def _outputs(layer: SVDLinear | SVDConv, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for mode in ("rebuild", "factorised", "auto"):
        layer.mode = mode
        out[mode] = layer(x)
    return out


@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_svd_linear_is_exact_at_init(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    base = nn.Linear(shape[1], shape[0])
    x = torch.randn(3, 5, shape[1])
    expected = base(x).detach()
    layer = SVDLinear(copy.deepcopy(base))
    for out in _outputs(layer, x).values():
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    assert layer.scale.shape == layer.shift.shape == (min(shape),)


def test_modes_agree_and_merge_for_random_scale_shift() -> None:
    torch.manual_seed(0)
    layer = SVDLinear(nn.Linear(40, 24))
    _perturb(layer)
    x = torch.randn(2, 7, 40)
    out = _outputs(layer, x)
    torch.testing.assert_close(out["factorised"], out["rebuild"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out["auto"], out["rebuild"], atol=ATOL, rtol=0)
    merged = layer.merge()
    assert type(merged) is nn.Linear and not merged.weight.requires_grad
    torch.testing.assert_close(merged(x), out["rebuild"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("kernel,bias", [(1, False), (3, True)])
def test_svd_conv2d_modes_merge_and_init(kernel: int, bias: bool) -> None:
    torch.manual_seed(0)
    base = nn.Conv2d(6, 10, kernel, padding=kernel // 2, bias=bias)
    x = torch.randn(2, 6, 8, 8)
    expected = base(x).detach()
    layer = SVDConv(copy.deepcopy(base))
    for out in _outputs(layer, x).values():
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    _perturb(layer)
    out = _outputs(layer, x)
    torch.testing.assert_close(out["factorised"], out["rebuild"], atol=ATOL, rtol=0)
    merged = layer.merge()
    assert type(merged) is nn.Conv2d
    torch.testing.assert_close(merged(x), out["rebuild"], atol=ATOL, rtol=0)


def test_auto_mode_picks_cheaper_path() -> None:
    layer = SVDLinear(nn.Linear(64, 64))
    with torch.no_grad():  # inference: N r (D+K) < D K r + N D K  <=>  N < 64
        assert layer.use_factorised(1) and layer.use_factorised(63)
        assert not layer.use_factorised(64) and not layer.use_factorised(4096)
    # training: 2 N r (D+K) < 2 D K r + 3 N D K  <=>  N < 128
    assert layer.use_factorised(64) and layer.use_factorised(127)
    assert not layer.use_factorised(128) and not layer.use_factorised(4096)
    layer.scale.requires_grad_(False)
    layer.shift.requires_grad_(False)  # nothing of the layer trains: the inference count applies
    assert not layer.use_factorised(64)
    layer.mode = "factorised"
    assert layer.use_factorised(4096)
    with pytest.raises(ValueError, match="unknown SVD mode"):
        layer.mode = "fast"


@pytest.mark.parametrize("include_neck", [False, True])
def test_sam_embeddings_unchanged_at_init(model: Segmenter, pixels: torch.Tensor, include_neck: bool) -> None:
    expected = _embed(model, pixels)
    apply_svd(model, SVDConfig(include_neck=include_neck))
    assert len(svd_layers(model)) == 8 + 2 * include_neck
    for mode in ("rebuild", "factorised", "auto"):
        set_svd_mode(model, mode)
        torch.testing.assert_close(_embed(model, pixels), expected, atol=ATOL, rtol=0)


def test_sam_merge_gives_plain_layers(model: Segmenter, pixels: torch.Tensor) -> None:
    apply_svd(model, SVDConfig(include_neck=True))
    for i, layer in enumerate(svd_layers(model)):
        _perturb(layer, seed=i)
    expected = _embed(model, pixels)
    merged = get_method("svd").merge(model)
    assert merged is model and not svd_layers(model)
    vision = model.sam.vision_encoder
    for block in vision.layers:
        for lin in (block.attn.qkv, block.attn.proj, block.mlp.lin1, block.mlp.lin2):
            assert type(lin) is nn.Linear
    assert type(vision.neck.conv1) is nn.Conv2d and type(vision.neck.conv2) is nn.Conv2d
    torch.testing.assert_close(_embed(model, pixels), expected, atol=ATOL, rtol=0)


def _adapted_shapes(base: SamModel, include_neck: bool) -> list[tuple[int, ...]]:
    names = [
        rf"vision_encoder\.layers\.\d+\.{m}\.weight" for m in (r"attn\.qkv", r"attn\.proj", r"mlp\.lin\d")
    ]
    if include_neck:
        names.append(r"vision_encoder\.neck\.conv\d\.weight")
    return [tuple(p.shape) for n, p in base.named_parameters() if any(re.fullmatch(r, n) for r in names)]


@pytest.mark.parametrize("train_scale,train_shift", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("include_neck", [False, True])
def test_gradients_and_trainable_count(
    model: Segmenter,
    base_sam: SamModel,
    pixels: torch.Tensor,
    train_scale: bool,
    train_shift: bool,
    include_neck: bool,
) -> None:
    cfg = SVDConfig(include_neck=include_neck, train_scale=train_scale, train_shift=train_shift)
    apply_svd(model, cfg)
    _embed(model, pixels).square().mean().backward()
    enabled = {name for name, on in (("scale", train_scale), ("shift", train_shift)) if on}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == _trainable(model)
    assert {n.rpartition(".")[2] for n in with_grad} == enabled

    shapes = _adapted_shapes(base_sam, include_neck)
    assert len(shapes) == 8 + 2 * include_neck
    per_matrix = sum(min(s[0], torch.Size(s[1:]).numel()) for s in shapes)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == len(enabled) * per_matrix
    if train_scale and train_shift:
        assert trainable == sum(2 * min(s[0], torch.Size(s[1:]).numel()) for s in shapes)
    for layer in svd_layers(model):  # a disabled vector stays frozen at its initial value
        if not train_scale:
            assert not layer.scale.requires_grad and torch.equal(layer.scale, torch.ones_like(layer.scale))
        if not train_shift:
            assert not layer.shift.requires_grad and not layer.shift.any()


def test_regularizer_and_penalty(model: Segmenter) -> None:
    apply_svd(model, SVDConfig(reg_weight=0.5))
    reg = svd_regularizer(model)
    assert reg.item() == 0.0
    reg.backward()  # finite gradient at the non-differentiable-looking origin
    assert all(torch.isfinite(layer.scale.grad).all() for layer in svd_layers(model))
    layer = svd_layers(model)[0]
    _perturb(layer)
    expected = torch.linalg.vector_norm(1 - layer.scale) + torch.linalg.vector_norm(layer.shift)
    torch.testing.assert_close(svd_regularizer(model), expected)
    assert svd_regularizer(model).item() > 0
    torch.testing.assert_close(svd_penalty(model), 0.5 * expected)
    assert svd_penalty(Segmenter(_tiny_sam())).item() == 0.0


def test_state_dict_holds_no_factors_and_reload_refreshes(model: Segmenter, base_sam: SamModel) -> None:
    apply_svd(model, SVDConfig())
    keys = set(model.state_dict())
    assert not any(re.search(r"\.(U|S|Vh)$", k) for k in keys)
    assert {"sam." + k for k in base_sam.state_dict()} <= keys  # base weights keep their names
    layer = model.sam.vision_encoder.layers[0].attn.proj
    new_weight = torch.randn_like(layer.weight)
    model.load_state_dict({"sam.vision_encoder.layers.0.attn.proj.weight": new_weight}, strict=False)
    torch.testing.assert_close(layer.effective_matrix(), new_weight, atol=ATOL, rtol=0)
    model.load_state_dict(model.state_dict())  # strict: no key missing or unexpected
    torch.testing.assert_close(layer.effective_matrix(), new_weight, atol=ATOL, rtol=0)
    with pytest.raises(
        RuntimeError, match=r"size mismatch for sam\.vision_encoder\.layers\.0\.attn\.proj\.weight"
    ):
        model.load_state_dict(
            {"sam.vision_encoder.layers.0.attn.proj.weight": torch.zeros(3, 3)}, strict=False
        )


def test_layer_keeps_the_factors_instead_of_the_base_weight(model: Segmenter, base_sam: SamModel) -> None:
    base_state = {"sam." + k: v for k, v in base_sam.state_dict().items()}
    base_total = sum(p.numel() for p in model.parameters())
    apply_svd(model, SVDConfig(include_neck=True))
    assert any(isinstance(m, SVDConv) for m in model.modules())
    for name, layer in model.named_modules():
        if not isinstance(layer, SVDLinear | SVDConv):
            continue
        stored = {n: t.numel() for n, t in [*layer.named_parameters(), *layer.named_buffers()]}
        d, k = layer.weight_shape[0], math.prod(layer.weight_shape[1:])
        r = min(d, k)
        expected = {"scale": r, "shift": r, "U": d * r, "S": r, "Vh": r * k}
        assert stored == expected | ({"bias": d} if layer.bias is not None else {})
        torch.testing.assert_close(
            model.state_dict()[name + ".weight"], base_state[name + ".weight"], atol=ATOL, rtol=0
        )
    scale_shift = sum(2 * layer.scale.numel() for layer in svd_layers(model))
    assert trainable_share(model) == (scale_shift, base_total + scale_shift)  # the base weights still count


def test_config_validation_and_registry(model: Segmenter) -> None:
    with pytest.raises(ValidationError):
        SVDConfig(rank=4)
    with pytest.raises(ValidationError):
        SVDConfig(mode="fast")
    with pytest.raises(ValidationError):
        SVDConfig(targets=["(unclosed"])
    assert get_method("svd").config_cls is SVDConfig and get_method("svd").merge is merge_svd
    with pytest.raises(ValueError, match="no nn.Linear"):
        apply_svd(model, SVDConfig(targets=[r"no_such_layer$"]))


def _expected(model: nn.Module, keep: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if re.search(keep, n)}


def test_layernorm_scopes(model: Segmenter) -> None:
    encoder = copy.deepcopy(model)
    apply_layernorm(encoder, LayerNormConfig())
    assert _trainable(encoder) == {
        f"sam.vision_encoder.{m}.{p}"
        for m in (
            "layers.0.layer_norm1",
            "layers.0.layer_norm2",
            "layers.1.layer_norm1",
            "layers.1.layer_norm2",
        )
        + ("neck.layer_norm1", "neck.layer_norm2")
        for p in ("weight", "bias")
    }
    apply_layernorm(model, LayerNormConfig(scope="all"))
    expected = _expected(model, r"\.[a-z_]*layer_norm[a-z_0-9]*\.(weight|bias)$")
    assert _trainable(model) == expected and any("mask_decoder" in n for n in expected)
    assert any("prompt_encoder" in n for n in expected)
    with pytest.raises(ValidationError):
        LayerNormConfig(scope="decoder")


@pytest.mark.parametrize(
    "scope,keep",
    [
        ("encoder", r"^sam\.vision_encoder\..*\.bias$"),
        ("decoder", r"^sam\.mask_decoder\..*\.bias$"),
        ("all", r"\.bias$"),
    ],
)
def test_bias_scopes(model: Segmenter, scope: str, keep: str) -> None:
    apply_bias(model, BiasConfig(scope=scope))
    expected = _expected(model, keep)
    assert expected and _trainable(model) == expected


def test_bias_after_svd_trains_wrapped_biases(model: Segmenter) -> None:
    apply_svd(model, SVDConfig())
    apply_bias(model, BiasConfig(scope="encoder"))
    assert "sam.vision_encoder.layers.0.attn.qkv.bias" in _trainable(model)


def test_pos_embed(model: Segmenter) -> None:
    apply_pos_embed(model, PosEmbedConfig())
    assert _trainable(model) == {"sam.vision_encoder.pos_embed"}
    with pytest.raises(ValueError, match="has no position embedding"):
        apply_pos_embed(Segmenter(_tiny_sam(use_abs_pos=False)), PosEmbedConfig())
    with pytest.raises(ValidationError):
        PosEmbedConfig(scope="all")
