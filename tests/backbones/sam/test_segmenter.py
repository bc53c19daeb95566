"""The segmenter against transformers' SamModel, and the LoRA-family adapters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medpeft.adapters.lora import VectorLoraConfig, vector_ranks
from medpeft.adapters.qv_lora import QVLoraLinear
from medpeft.backbones.sam.loading import load_sam
from medpeft.backbones.sam.segmenter import SamSegmenter
from medpeft.config import parse_config
from medpeft.engine.build import apply_methods, merge_methods
from medpeft.models.prompts import Prompts
from medpeft.models.text import LearnedClassPrompt


@pytest.fixture
def sam():
    torch.manual_seed(0)
    return load_sam("sam-tiny", 64)[0]


def _upsampled(pred_masks: torch.Tensor) -> torch.Tensor:
    return F.interpolate(pred_masks[:, :, 0], size=(64, 64), mode="bilinear", align_corners=False)


def test_matches_sam_model_for_boxes_and_points(sam) -> None:
    seg = SamSegmenter(sam, ["a"])
    x = torch.randn(2, 3, 64, 64)
    boxes = torch.tensor([[[10.0, 10, 30, 40]], [[5, 5, 20, 20]]])
    with torch.no_grad():
        ref = sam(pixel_values=x, input_boxes=boxes, multimask_output=False).pred_masks
        assert torch.equal(seg(x, Prompts(boxes=boxes)), _upsampled(ref))
        pts = torch.tensor([[[[10.0, 20], [40, 40]]], [[[30, 30], [5, 5]]]])
        lab = torch.tensor([[[1, 0]], [[1, 1]]])
        ref = sam(pixel_values=x, input_points=pts, input_labels=lab, multimask_output=False).pred_masks
        assert torch.equal(seg(x, Prompts(points=pts, point_labels=lab)), _upsampled(ref))


def test_multiclass_shapes_and_absent_boxes(sam) -> None:
    seg = SamSegmenter(sam, ["a", "b", "c"], LearnedClassPrompt(["a", "b", "c"], 32)).eval()
    x = torch.randn(2, 3, 64, 64)
    boxes = torch.rand(2, 3, 4) * 30
    valid = torch.tensor([[True, False, True], [True, True, False]])
    with torch.no_grad():
        out = seg(x, Prompts(boxes=boxes, box_valid=valid, class_ids=torch.arange(3).expand(2, 3)))
        assert out.shape == (2, 3, 64, 64)
        moved = boxes.clone()
        moved[~valid] += 17  # coordinates of absent boxes must not matter
        assert torch.equal(out, seg(x, Prompts(boxes=moved, box_valid=valid)))
        auto = seg(x)  # automatic mode: class tokens only, one mask per class
        assert auto.shape == (2, 3, 64, 64)
        assert not torch.allclose(auto[:, 0], auto[:, 1])


def test_no_prompt_multiclass_without_class_prompt_is_an_error(sam) -> None:
    with pytest.raises(ValueError, match="cannot tell them apart"):
        SamSegmenter(sam, ["a", "b"])(torch.randn(1, 3, 64, 64))


def _model(sam, adapters):
    cfg = parse_config({"adapters": adapters, "model": {"image_size": 64}})
    seg = SamSegmenter(sam, ["a"], LearnedClassPrompt(["a"], 32))
    seg.requires_grad_(False)
    return apply_methods(seg, cfg), cfg


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_lora_trains_only_adapters_and_composes(sam) -> None:
    model, _ = _model(sam, [{"name": "layernorm"}, {"name": "lora", "r": 2}])
    names = _trainable(model)
    assert any(".attn.qkv.lora_A." in n for n in names) and any(".attn.qkv.lora_B." in n for n in names)
    assert any("layer_norm1.weight" in n for n in names), (
        "LoRA injection must keep earlier methods' tensors trainable"
    )
    assert not any(".attn.qkv.base_layer." in n or "mask_decoder" in n for n in names)


def test_decoder_method_unfreezes_decoder_and_prompt_encoder(sam) -> None:
    model, _ = _model(sam, [{"name": "decoder", "prompt_encoder": False}])
    names = _trainable(model)
    assert any(n.startswith("sam.mask_decoder.") for n in names)
    assert not any(n.startswith(("sam.prompt_encoder.", "sam.vision_encoder.")) for n in names)


@pytest.mark.parametrize(
    "adapters",
    [
        [{"name": "lora", "r": 2, "targets": "all"}],
        [{"name": "lora", "r": 2, "qv": True}],
        [{"name": "vector_lora", "ranks": [3, 1]}],
    ],
)
def test_merge_is_equivalent(sam, adapters) -> None:
    model, cfg = _model(sam, adapters)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # B starts at zero; perturb so the merge has something to fold
    x, boxes = torch.randn(1, 3, 64, 64), torch.tensor([[[8.0, 8, 40, 40]]])
    model.eval()
    with torch.no_grad():
        before = model(x, Prompts(boxes=boxes))
        merge_methods(model, cfg)
        after = model(x, Prompts(boxes=boxes))
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert not any(isinstance(m, QVLoraLinear) for m in model.modules())
    assert (before - after).abs().max().item() < 1e-5


def test_qv_lora_starts_at_base_and_leaves_k_alone(sam) -> None:
    model, _ = _model(sam, [{"name": "lora", "r": 2, "qv": True}])
    layer = model.sam.vision_encoder.layers[0].attn.qkv
    assert isinstance(layer, QVLoraLinear)
    x = torch.randn(5, 32)
    assert torch.equal(layer(x), layer.base_layer(x))
    with torch.no_grad():
        layer.lora_B_q.weight.fill_(1.0)
        layer.lora_B_v.weight.fill_(1.0)
    delta = layer(x) - layer.base_layer(x)
    assert (
        delta[:, 32:64].abs().max() == 0 and delta[:, :32].abs().max() > 0 and delta[:, 64:].abs().max() > 0
    )


def test_vector_lora_rank_schedules(sam) -> None:
    assert vector_ranks(12, VectorLoraConfig(ranks=[14, 14, 12, 12, 10, 10, 8, 8, 8, 8, 8, 8])) == [
        14,
        14,
        12,
        12,
        10,
        10,
        8,
        8,
        8,
        8,
        8,
        8,
    ]
    assert vector_ranks(4, VectorLoraConfig(schedule="linear", r_max=14, r_min=8)) == [14, 12, 10, 8]
    assert vector_ranks(3, VectorLoraConfig(schedule="geometric", r_max=16, r_min=4)) == [16, 8, 4]
    model, _ = _model(sam, [{"name": "vector_lora", "ranks": [5, 2]}])
    layers = model.sam.vision_encoder.layers
    assert layers[0].attn.qkv.lora_A["default"].weight.shape[0] == 5
    assert layers[1].attn.qkv.lora_A["default"].weight.shape[0] == 2
    # alpha follows rank (alpha_ratio 1): every block's scaling is 1
    assert layers[0].attn.qkv.scaling["default"] == layers[1].attn.qkv.scaling["default"] == 1.0
    with pytest.raises(ValueError, match="has 3 entries but the encoder has 2 blocks"):
        _model(load_sam("sam-tiny", 64)[0], [{"name": "vector_lora", "ranks": [5, 2, 1]}])
