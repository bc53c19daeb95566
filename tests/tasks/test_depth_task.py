"""The depth task end to end on a tiny Depth Anything: training lowers AbsRel, evaluation, prediction
files, merge into a transformers folder, and the errors a user meets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import DepthAnythingForDepthEstimation

from depth_fixtures import DEPTH_SCALE, make_depth_dataset
from medpeft.config import parse_config
from medpeft.data.depth import read_depth
from medpeft.engine.build import build_model
from medpeft.engine.trainer import train
from medpeft.tasks.base import make_task


def _cfg(root: Path, out: Path, base: str, **train_opts) -> dict:
    return {
        "model": {"base": base, "image_size": 56},
        "data": {"root": str(root), "split": [0.6, 0.2, 0.2]},
        "depth": {"scale": DEPTH_SCALE},
        "adapters": [{"name": "lora", "r": 4}, {"name": "decoder"}],
        "train": {
            "output_dir": str(out),
            "epochs": 8,
            "batch_size": 4,
            "lr": 3e-3,
            "log_every": 1,
            **train_opts,
        },
    }


@pytest.fixture(scope="module")
def depth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_depth_dataset(tmp_path_factory.mktemp("depth") / "scenes", n=24, size=56)


@pytest.fixture(scope="module")
def metric_run(depth_data: Path, tmp_path_factory: pytest.TempPathFactory):
    cfg = parse_config(
        _cfg(depth_data, tmp_path_factory.mktemp("runs") / "metric", "depth-anything-tiny-metric")
    )
    task = make_task(cfg)
    splits = task.splits()
    model, _ = build_model(cfg, [])
    before = task.validate(model, task.dataset(splits.val, [], train=False))
    return before, train(cfg, progress=False), cfg


def test_metric_fine_tune_lowers_absrel(metric_run) -> None:
    before, result, _ = metric_run
    assert result.metric == "abs_rel" and result.best_dice is None
    val = [h["val_abs_rel"] for h in result.history if "val_abs_rel" in h]
    assert result.best_score == min(val)  # best = lowest AbsRel
    assert before > 1.0 and result.best_score < 0.35  # measured: 1.42 before, 0.24 after 32 steps
    assert (result.run_dir / "checkpoints").is_dir() and result.best_checkpoint is not None
    header = (result.run_dir / "log.csv").read_text().splitlines()[0].split(",")
    assert "silog" in header and "val_abs_rel" in header and "dice" not in header


def test_relative_fine_tune_lowers_aligned_absrel(depth_data: Path, tmp_path: Path) -> None:
    cfg = parse_config(_cfg(depth_data, tmp_path / "rel", "depth-anything-tiny", epochs=6))
    task = make_task(cfg)
    model, _ = build_model(cfg, [])
    before = task.validate(model, task.dataset(task.splits().val, [], train=False))
    result = train(cfg, progress=False)
    assert result.best_score < before - 0.005  # scale-and-shift aligned; measured 0.094 -> 0.082 in 8 epochs
    assert "ssi" in (result.run_dir / "log.csv").read_text().splitlines()[0]


def test_predict_writes_16bit_depth_and_pictures(metric_run, depth_data: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medpeft.cli import app

    _, result, _ = metric_run
    out = tmp_path / "pred"
    run = CliRunner().invoke(
        app,
        ["predict", str(result.run_dir), str(depth_data / "images"), "--out", str(out), "--task", "depth"],
    )
    assert run.exit_code == 0, run.output
    report = json.loads((out / "predictions.json").read_text())
    assert report["task"] == "depth" and len(report["images"]) == 24 and "metres" in report["depth_png"]
    first = report["images"][0]
    pred = read_depth(out / first["depth"], DEPTH_SCALE)
    gt = read_depth(depth_data / "depth" / Path(first["depth"]).name, DEPTH_SCALE)
    assert pred.shape == gt.shape and (pred > 0).all()
    valid = gt > 0
    assert np.abs(pred[valid] - gt[valid]).mean() / gt[valid].mean() < 0.5  # a depth in metres, not noise
    assert (out / first["picture"]).is_file()

    wrong = CliRunner().invoke(
        app,
        [
            "predict",
            str(result.run_dir),
            str(depth_data / "images"),
            "--out",
            str(tmp_path / "x"),
            "--task",
            "segmentation",
        ],
    )
    assert wrong.exit_code != 0 and "is a depth checkpoint" in wrong.output and not (tmp_path / "x").exists()
    prompts = tmp_path / "p.json"
    prompts.write_text("{}")
    refused = CliRunner().invoke(
        app,
        [
            "predict",
            str(result.run_dir),
            str(depth_data / "images"),
            "--out",
            str(tmp_path / "y"),
            "--prompts",
            str(prompts),
        ],
    )
    assert refused.exit_code != 0 and "takes no prompts" in refused.output


def test_evaluate_writes_metrics_and_pictures(metric_run, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medpeft.cli import app

    _, result, _ = metric_run
    out = tmp_path / "ev"
    run = CliRunner().invoke(app, ["evaluate", str(result.run_dir), "--out", str(out)])
    assert run.exit_code == 0, run.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 5 and summary["align"] == "none"
    assert 0 < summary["mean"]["abs_rel"] < 0.5 and 0 <= summary["mean"]["a1"] <= 1
    assert {"best", "median", "worst"} == set(summary["pictures"])
    assert all((out / p["file"]).is_file() for p in summary["pictures"].values())


def test_merge_writes_a_depth_anything_folder(metric_run, tmp_path: Path) -> None:
    from medpeft.engine.merge import merge_checkpoint
    from medpeft.engine.restore import load_trained

    _, result, _ = metric_run
    diff = merge_checkpoint(result.run_dir, tmp_path / "merged")
    assert diff < 1e-5
    merged = DepthAnythingForDepthEstimation.from_pretrained(tmp_path / "merged").eval()
    model, _, _ = load_trained(result.run_dir)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(
            merged(pixel_values=x).predicted_depth[:, None], model(x), atol=1e-5, rtol=1e-5
        )


def test_depth_config_errors(tmp_path: Path) -> None:
    from medpeft.config import ConfigError

    with pytest.raises(ConfigError, match="multiple of 14; nearest valid sizes are 238 and 252"):
        parse_config({"model": {"base": "depth-anything-tiny", "image_size": 250}})
    with pytest.raises(ConfigError, match="does not fit backbone 'depth_anything'"):
        parse_config({"task": "segmentation", "model": {"base": "depth-anything-tiny"}})
    assert parse_config({"model": {"base": "depth-anything-tiny"}}).model.image_size == 518
