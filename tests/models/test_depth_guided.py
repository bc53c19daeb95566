"""The depth-guided segmenter on tiny presets: every depth source and fusion direction runs forward and
backward with prompts, and an adapted Depth Anything encoder really receives gradients."""

from __future__ import annotations

import pytest
import torch

from medpeft.backbones import get_backbone
from medpeft.config import parse_config
from medpeft.engine.build import apply_methods
from medpeft.models.depth_guided import DepthGuidedSegmenter
from medpeft.models.prompts import Prompts


def _parts(rgb: str, source: str):
    torch.manual_seed(0)
    base, _ = get_backbone(rgb).load(f"{rgb}-tiny", 64)
    segmenter = get_backbone(rgb).wrap(base, ["ridge", "ligament"], None)
    depth = None
    if source == "depth_anything":
        dpt, _ = get_backbone("depth_anything").load("depth-anything-tiny", 56)
        depth = get_backbone("depth_anything").wrap(dpt)
    return segmenter, depth


@pytest.mark.parametrize("rgb", ["sam2", "sam"])
@pytest.mark.parametrize("source", ["depth_anything", "file", "none"])
@pytest.mark.parametrize("direction", ["depth_queries_rgb", "rgb_queries_depth", "both"])
def test_forward_backward_every_source_and_direction(rgb: str, source: str, direction: str) -> None:
    if source == "none" and direction != "depth_queries_rgb":
        pytest.skip("no fusion without depth")
    segmenter, depth = _parts(rgb, source)
    model = DepthGuidedSegmenter(segmenter, depth, source, direction)
    images = torch.randn(2, 3, 64, 64)
    depth_maps = torch.rand(2, 1, 64, 64) if source == "file" else None
    boxes = Prompts(boxes=torch.tensor([[[4.0, 4.0, 40.0, 40.0], [20.0, 20.0, 60.0, 60.0]]]).expand(2, 2, 4))
    logits = model(images, boxes, depth_maps)
    assert logits.shape == (2, 2, 64, 64)
    logits.square().mean().backward()
    if source != "none":
        assert all(p.grad is not None for p in model.fusion.parameters())
    if source == "file":
        assert all(p.grad is not None for p in model.stem.parameters())


def test_adapted_depth_anything_receives_gradients_and_frozen_one_does_not() -> None:
    segmenter, depth = _parts("sam2", "depth_anything")
    model = DepthGuidedSegmenter(segmenter, depth, "depth_anything")
    model.requires_grad_(False)
    cfg = parse_config(
        {"model": {"base": "depth-anything-tiny", "image_size": 56}, "adapters": [{"name": "lora", "r": 2}]}
    )
    apply_methods(model.depth, cfg)  # any method on the depth encoder, through its own target table
    model.fusion.requires_grad_(True)
    model(
        torch.randn(1, 3, 64, 64), Prompts(boxes=torch.tensor([[[4.0, 4.0, 40.0, 40.0]] * 2]))
    ).mean().backward()
    lora = {n: p for n, p in model.depth.named_parameters() if "lora_" in n}
    assert lora and all(p.grad is not None for p in lora.values())
    assert all(
        p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n
    )  # B starts at 0, so A's grad is 0
    assert all(p.grad is None for n, p in model.depth.named_parameters() if "lora_" not in n)
    assert all(p.grad is None for p in model.rgb.parameters())


def test_target_table_points_methods_at_the_rgb_encoder() -> None:
    segmenter, depth = _parts("sam2", "depth_anything")
    model = DepthGuidedSegmenter(segmenter, depth, "depth_anything")
    cfg = parse_config(
        {"model": {"base": "sam2-tiny", "image_size": 64}, "adapters": [{"name": "lora", "r": 2}]}
    )
    model.requires_grad_(False)  # as build_model does before applying methods
    apply_methods(model, cfg)
    adapted = {n for n, p in model.named_parameters() if p.requires_grad}
    assert adapted and all(n.startswith("rgb.sam.vision_encoder.") and "lora_" in n for n in adapted)


def test_source_and_depth_model_must_agree() -> None:
    segmenter, depth = _parts("sam2", "depth_anything")
    with pytest.raises(ValueError, match="'file' takes no depth model"):
        DepthGuidedSegmenter(segmenter, depth, "file")
    with pytest.raises(ValueError, match="needs depth model"):
        DepthGuidedSegmenter(segmenter, None, "depth_anything")
    model = DepthGuidedSegmenter(segmenter, None, "file")
    with pytest.raises(ValueError, match="needs depth_maps"):
        model(torch.randn(1, 3, 64, 64), Prompts(boxes=torch.zeros(1, 2, 4)))


def _configured(source: str, **depth_guided):
    from medpeft.engine.build import build_model

    cfg = parse_config(
        {
            "model": {
                "base": "sam2-tiny",
                "image_size": 64,
                "depth_guided": {
                    "depth_source": source,
                    "depth_model": "depth-anything-tiny",
                    **depth_guided,
                },
            },
            "adapters": [{"name": "lora", "r": 2}],
        }
    )
    return build_model(cfg, ["ridge", "ligament", "silhouette"])[0]


@pytest.mark.parametrize("source", ["depth_anything", "file", "none"])
def test_fpn_decoder_with_softmax_output_from_config(source: str) -> None:
    model = _configured(
        source, decoder="fpn", output="softmax", width=16, depth_adapters=[{"name": "lora", "r": 2}]
    )
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    expected = {"rgb", "decoder"} | ({"fusion"} if source != "none" else set())
    expected |= {"stem"} if source == "file" else {"depth"} if source == "depth_anything" else set()
    assert trainable == expected
    depth_maps = torch.rand(2, 1, 64, 64) if source == "file" else None
    logits = model(torch.randn(2, 3, 64, 64), None, depth_maps)
    assert logits.shape == (2, 3, 64, 64)
    assert float(torch.sigmoid(logits.detach()).sum(1).max()) < 1.0  # exclusive classes + background
    logits.mean().backward()
    assert all(p.grad is not None for p in model.decoder.parameters())
    if source == "depth_anything":
        assert any(
            p.grad is not None and p.grad.abs().sum() > 0
            for n, p in model.depth.named_parameters()
            if "lora_B" in n
        )


def test_softmax_logits_are_the_softmax_against_background() -> None:
    from medpeft.models.fpn_decoder import softmax_logits

    scores = torch.randn(2, 4, 5, 5) * 4
    scores[0, 0, 0, 0] = 80.0  # saturated: stays finite
    logits = softmax_logits(scores)
    expected = torch.softmax(torch.cat([torch.zeros(2, 1, 5, 5), scores], 1), 1)[:, 1:]
    assert torch.allclose(torch.sigmoid(logits), expected, atol=1e-6)
    assert torch.isfinite(logits).all()


def test_info_reports_the_depth_guided_parts() -> None:
    from medpeft.engine.report import parameter_counts

    counts = parameter_counts(_configured("file", width=16))
    assert counts["depth_stem"][0] == counts["depth_stem"][1] > 0  # new modules train in full
    assert counts["fusion"][0] == counts["fusion"][1] > 0
    assert 0 < counts["encoder"][0] < counts["encoder"][1]  # LoRA on the RGB encoder
