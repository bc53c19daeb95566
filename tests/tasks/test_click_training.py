"""SAM's simulated-click training: rounds of error-region clicks with the previous logits as the mask input
before the trained forward, so the mask encoder learns to refine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import make_shapes_dataset
from medpeft.config import parse_config
from medpeft.data.readers import read_dataset
from medpeft.engine.build import build_model
from medpeft.tasks.segmentation import SegmentationTask, build_dataset, sample_click_rounds
from medpeft.tasks.segmentation_clicks import click_rounds, next_click, to_mask_input


def _setup(tmp_path: Path, **prompts):
    data = make_shapes_dataset(tmp_path / "shapes", n=4, big=True)
    cfg = parse_config(
        {
            "model": {"base": "sam-tiny", "image_size": 64},
            "data": {"root": str(data)},
            "prompts": {"train_modes": {"point": 1.0}, **prompts},
            "adapters": [{"name": "lora", "r": 2}, {"name": "decoder"}],
        }
    )
    records, labels = read_dataset(data)
    model, _ = build_model(cfg, labels)
    batch = next(iter(DataLoader(build_dataset(cfg, records, labels, train=True), batch_size=4)))
    return cfg, model, batch


def test_rounds_add_error_region_clicks_and_carry_the_mask(tmp_path: Path) -> None:
    from medpeft.models.prompts import Prompts

    cfg, model, batch = _setup(tmp_path)
    model.train()
    start = Prompts.from_batch(batch, "point")
    prompts = click_rounds(model, batch, start, 3)
    assert model.training  # restored after the no-gradient rounds
    b, c = batch["masks"].shape[:2]
    assert prompts.points.shape == (b, c, 1 + 3, 2) and prompts.masks.shape == (b, c, 16, 16)
    present = (batch["class_valid"] & (batch["masks"] > 0.5).flatten(2).any(-1)).numpy()
    added = prompts.point_labels[:, :, 1:].numpy()
    assert np.isin(added[present], (0, 1)).all() and (added[~present] == -1).all()
    # the first added click is next_click on the first round's prediction
    model.eval()
    with torch.no_grad():
        first = model(batch["image"], start) > 0
    for i, k in zip(*np.nonzero(present), strict=True):
        click = next_click(first[i, k].numpy(), batch["masks"][i, k].numpy() > 0.5)
        if click is not None:
            assert prompts.points[i, k, 1].tolist() == [click[0], click[1]] and added[i, k, 0] == click[2]
    # the mask carried is the last round's logits, at a quarter of the input size
    with torch.no_grad():
        before_last = Prompts(
            points=prompts.points[:, :, :3],
            point_labels=prompts.point_labels[:, :, :3],
            class_ids=start.class_ids,
        )
        previous = click_rounds(model, batch, start, 2)
        last = model(batch["image"], previous)
    assert torch.allclose(prompts.masks, to_mask_input(last), atol=1e-5)
    assert torch.equal(before_last.points, previous.points)


def test_click_training_reaches_the_mask_encoder(tmp_path: Path) -> None:
    """Without click rounds SAM's mask encoder never gets a gradient; with them it does."""
    for rounds, expect in ((0, False), (2, True)):
        cfg, model, batch = _setup(tmp_path / str(rounds), click_rounds=rounds, click_p=1.0)
        model.train()
        loss, _ = SegmentationTask(cfg).loss(model, batch, step=0, micro=0)
        loss.backward()
        grads = [p.grad for p in model.sam.prompt_encoder.mask_embed.parameters()]
        assert all(p.requires_grad for p in model.sam.prompt_encoder.mask_embed.parameters())
        assert any(g is not None and g.abs().sum() > 0 for g in grads) is expect


def test_click_rounds_are_drawn_reproducibly() -> None:
    cfg = parse_config({"model": {"base": "sam-tiny"}, "prompts": {"click_rounds": 4, "click_p": 0.5}})
    draws = [sample_click_rounds(cfg, step, 0) for step in range(200)]
    assert draws == [sample_click_rounds(cfg, step, 0) for step in range(200)]
    assert 0.35 < np.mean([d > 0 for d in draws]) < 0.65 and set(draws) - {0} == {1, 2, 3, 4}
    off = parse_config({"model": {"base": "sam-tiny"}})
    assert all(sample_click_rounds(off, step, 0) == 0 for step in range(20))
    with pytest.raises(ValueError, match="click_p"):
        parse_config({"model": {"base": "sam-tiny"}, "prompts": {"click_p": 1.5}})
