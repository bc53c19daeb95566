"""SAM2 as a promptable segmenter: box/point/automatic/text prompts, fine-tuning through the one loop,
bit-exact adapters, and ``medpeft merge`` into a folder ``Sam2Model.from_pretrained`` loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Sam2Model

from clip_fixtures import save_tiny_clip
from conftest import make_shapes_dataset, tiny_config_dict
from medpeft.backbones import backbone_for
from medpeft.backbones.sam2 import Sam2Segmenter
from medpeft.config import ConfigError, parse_config
from medpeft.engine.build import build_model
from medpeft.models.prompts import Prompts


def _sam2_config(root: Path, out: Path, **train) -> dict:
    cfg = tiny_config_dict(root, out, **train)
    cfg["model"]["base"] = "sam2-tiny"
    return cfg


def test_sources_resolve_to_sam2() -> None:
    for source in ("sam2-tiny", "sam2-mini", "facebook/sam2.1-hiera-tiny", "facebook/sam2.1-hiera-base-plus"):
        assert backbone_for(source).name == "sam2", source
    assert backbone_for("sam-tiny").name == "sam" and backbone_for("facebook/sam-vit-base").name == "sam"


def test_size_rule_names_nearest_sizes() -> None:
    with pytest.raises(
        ConfigError, match="SAM2 needs a positive multiple of 32; nearest valid sizes are 224 and 256"
    ):
        parse_config({"model": {"base": "sam2-tiny", "image_size": 240}})


@pytest.mark.parametrize("mode", ["box", "point", "box+point", "auto"])
def test_every_prompt_mode_gives_per_class_logits(mode: str) -> None:
    cfg = parse_config(
        {"model": {"base": "sam2-tiny", "image_size": 64}, "adapters": [{"name": "lora", "r": 2}]}
    )
    model, _ = build_model(cfg, ["a", "b", "c"])
    images = torch.randn(2, 3, 64, 64)
    boxes = torch.tensor([[2.0, 2.0, 30.0, 30.0]]).expand(2, 3, 4)
    points = torch.tensor([[[16.0, 16.0]]]).expand(2, 3, 1, 2)
    prompts = {
        "box": Prompts(boxes=boxes),
        "point": Prompts(points=points),
        "box+point": Prompts(boxes=boxes, points=points),
        "auto": Prompts(class_ids=torch.arange(3).expand(2, 3)),
    }[mode]
    logits = model(images, prompts)
    assert logits.shape == (2, 3, 64, 64) and torch.isfinite(logits).all()
    if mode == "auto":  # class tokens alone tell the classes apart
        assert not torch.allclose(logits[:, 0], logits[:, 1])


def test_label_name_text_prompts(tmp_path: Path) -> None:
    clip = save_tiny_clip(tmp_path / "clip")
    cfg = parse_config(
        {
            "model": {
                "base": "sam2-tiny",
                "image_size": 64,
                "class_prompt": "text",
                "text_encoder": str(clip),
            },
            "adapters": [{"name": "svd"}],
        }
    )
    model, _ = build_model(cfg, ["liver", "spleen"])
    logits = model(torch.randn(1, 3, 64, 64), Prompts(class_ids=torch.tensor([[0, 1]])))
    assert logits.shape == (1, 2, 64, 64) and not torch.allclose(logits[:, 0], logits[:, 1])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("class_prompt.affine") for n in trainable)
    assert not any("text_encoder" in n for n in trainable)


def test_fine_tune_learns_and_merges(tmp_path: Path) -> None:
    from medpeft.engine.merge import merge_checkpoint
    from medpeft.engine.restore import load_trained
    from medpeft.engine.trainer import train

    root = make_shapes_dataset(tmp_path / "shapes", n=24, size=64, big=True)
    cfg = parse_config(_sam2_config(root, tmp_path / "run", epochs=12, lr=5e-3))
    result = train(cfg, progress=False)
    val = [h["val_dice"] for h in result.history if "val_dice" in h]
    assert val[0] < 0.2 and result.best_dice > 0.6  # measured: 0.01 after epoch 1, 0.81 after 12

    diff = merge_checkpoint(result.run_dir, tmp_path / "merged")
    assert diff < 1e-4
    merged = Sam2Model.from_pretrained(tmp_path / "merged").eval()
    model, _, _ = load_trained(result.run_dir)
    plain = Sam2Segmenter(merged, model.label_names, model.class_prompt).eval()  # no adapter layers left
    assert not any("lora" in n for n, _ in plain.named_parameters())
    x = torch.randn(1, 3, 64, 64)
    boxes = Prompts(boxes=torch.tensor([[[4.0, 4.0, 40.0, 40.0], [20.0, 20.0, 60.0, 60.0]]]))
    with torch.no_grad():
        torch.testing.assert_close(plain(x, boxes), model(x, boxes), atol=1e-4, rtol=1e-4)
