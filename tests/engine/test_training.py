"""Training engine: adapter round trip, resume after a kill, NaN handling, run-dir safety, merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import SamModel

from conftest import tiny_config_dict, train_killed_at_loss_call
from medpeft.backbones.sam.segmenter import SamSegmenter
from medpeft.config import parse_config
from medpeft.engine import checkpoint as ckpt
from medpeft.engine.merge import HEAD_FILE, merge_checkpoint
from medpeft.engine.restore import load_trained
from medpeft.engine.trainer import NonFiniteLoss, RunDirExists, train
from medpeft.tasks.segmentation import build_dataset, build_splits
from medpeft.tasks.segmentation_eval import predict_batches
from medpeft.tasks.segmentation_loss import SegmentationLoss


def _cfg(root: Path, out: Path, **train):
    return parse_config(tiny_config_dict(root, out, **train))


def _losses(history):
    return [(h["step"], h["loss"]) for h in history if "loss" in h]


def test_adapter_round_trip_reproduces_outputs(shapes_dataset: Path, tmp_path: Path) -> None:
    cfg = _cfg(shapes_dataset, tmp_path / "run", epochs=1, max_steps=2)
    result = train(cfg, progress=False)
    directory = ckpt.resolve_checkpoint(result.run_dir)
    record = json.loads((directory / ckpt.RECORD_FILE).read_text())
    assert record["base_model"]["source"] == "sam-tiny" and record["label_names"] == ["disc", "square"]
    saved = set(record["trainable"])
    assert saved and all(
        ("lora_" in n)
        or ("mask_decoder" in n)
        or ("prompt_encoder" in n)
        or ("class_prompt" in n)
        or ("shared_image_embedding" in n)
        for n in saved
    )
    size = (directory / ckpt.ADAPTER_FILE).stat().st_size
    assert size < 2_000_000

    model, _, cfg2 = load_trained(result.run_dir)
    again, _, _ = load_trained(directory)
    splits = build_splits(cfg2)
    ds = build_dataset(cfg2, splits.val, model.label_names, train=False)
    ((batch, a),) = list(predict_batches(model, ds, "box", 8))[:1]
    ((_, b),) = list(predict_batches(again, ds, "box", 8))[:1]
    assert torch.equal(a, b)
    # the adapter really changed the model: the bare base differs
    base = SamSegmenter(load_trained(directory)[0].sam, model.label_names, model.class_prompt)
    for n, p in base.named_parameters():
        if "lora_B" in n:
            p.data.zero_()
    ((_, c),) = list(predict_batches(base, ds, "box", 8))[:1]
    assert not torch.equal(a, c)


def test_resume_after_kill_continues_the_same_loss_curve(
    shapes_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    full = train(_cfg(shapes_dataset, tmp_path / "full", epochs=3, checkpoint_every=1), progress=False)

    cfg = _cfg(shapes_dataset, tmp_path / "killed", epochs=3, checkpoint_every=1)
    train_killed_at_loss_call(cfg, 6, monkeypatch)  # dies in the middle of step 6
    last = ckpt.resolve_pointer(cfg.train.output_dir, "last")
    assert last is not None and last.name == "step-000005"
    with pytest.raises(RunDirExists, match="--resume"):
        train(cfg, progress=False)
    resumed = train(cfg, resume=True, progress=False)
    assert resumed.steps == full.steps
    a, b = _losses(full.history), _losses(resumed.history)
    assert [s for s, _ in a] == [s for s, _ in b]
    assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-6, abs=1e-7)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    shapes_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    calls = {"n": 0}
    original = SegmentationLoss.forward

    def poisoned(self, logits, target, valid=None):
        calls["n"] += 1
        total, terms = original(self, logits, target, valid)
        return (total * float("nan"), terms) if calls["n"] == 3 else (total, terms)

    monkeypatch.setattr(SegmentationLoss, "forward", poisoned)
    cfg = _cfg(shapes_dataset, tmp_path / "nan", epochs=2, checkpoint_every=1)
    with pytest.raises(NonFiniteLoss, match="step 3.*step-000002"):
        train(cfg, progress=False)
    assert ckpt.resolve_pointer(cfg.train.output_dir, "last").name == "step-000002"


def test_existing_run_is_not_overwritten_without_asking(shapes_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirExists, match="--overwrite"):
        train(_cfg(shapes_dataset, out, max_steps=1), progress=False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_merge_writes_a_plain_sam_model_that_agrees(shapes_dataset: Path, tmp_path: Path) -> None:
    cfg = _cfg(shapes_dataset, tmp_path / "run", epochs=1, max_steps=3, lr=1e-2)
    train(cfg, progress=False)
    out = tmp_path / "merged"
    diff = merge_checkpoint(tmp_path / "run", out)
    assert diff < 1e-5
    merged = SamModel.from_pretrained(out)
    assert not any("lora" in n for n in merged.state_dict())
    assert (out / HEAD_FILE).is_file()

    model, _, cfg2 = load_trained(tmp_path / "run")
    from safetensors.torch import load_file

    head = type(model.class_prompt)(model.label_names, model.class_prompt.dim)
    head.load_state_dict(load_file(str(out / HEAD_FILE)))
    plain = SamSegmenter(merged, model.label_names, head).eval()
    ds = build_dataset(cfg2, build_splits(cfg2).val, model.label_names, train=False)
    ((_, a),) = list(predict_batches(model, ds, "box", 8))[:1]
    ((_, b),) = list(predict_batches(plain, ds, "box", 8))[:1]
    assert (a - b).abs().max().item() < 1e-5
