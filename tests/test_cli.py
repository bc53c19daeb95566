"""The command line: info, train, evaluate, predict, merge, and its one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import tiny_config_dict
from medpeft.cli import app

runner = CliRunner()


def _write_config(tmp_path: Path, data: Path, **train) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(tiny_config_dict(data, tmp_path / "run", **train)))))
    return path


def test_info_reports_parameter_share(shapes_dataset: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["info", str(_write_config(tmp_path, shapes_dataset))])
    assert result.exit_code == 0, result.output
    assert "labels: ['disc', 'square']" in result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith("whole model"))
    trainable, total = (int(x.replace(",", "")) for x in line.split()[2:4])
    assert 0 < trainable < total
    assert f"{100 * trainable / total:.3f}%" in line
    assert "optimizer adamw" in result.output


def test_train_evaluate_predict(shapes_dataset: Path, tmp_path: Path) -> None:
    config = _write_config(tmp_path, shapes_dataset, epochs=1, max_steps=2)
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert (run / "log.csv").is_file() and (run / "curves.png").is_file() and (run / "best.json").is_file()

    result = runner.invoke(app, ["evaluate", str(run), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "eval" / "per_image.csv").open()))
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert len(rows) == 2 * summary["images"] and {r["label"] for r in rows} == {"disc", "square"}
    dice = np.array([float(r["dice"]) for r in rows if r["label"] == "disc"])
    assert abs(summary["per_class"]["disc"]["dice"] - dice.mean()) < 1e-6
    assert any((tmp_path / "eval" / "overlays").iterdir())

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"img000.png": {"boxes": {"disc": [10, 10, 40, 40]}}}))
    images = shapes_dataset / "images"
    result = runner.invoke(
        app, ["predict", str(run), str(images), "--out", str(tmp_path / "pred"), "--prompts", str(prompts)]
    )
    assert result.exit_code == 0, result.output
    label_map = np.array(Image.open(tmp_path / "pred" / "masks" / "img000.png"))
    assert label_map.shape == (64, 64) and label_map.max() <= 2
    report = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    modes = {Path(r["image"]).name: r["prompt_mode"] for r in report["images"]}
    assert modes["img000.png"] == "box" and modes["img001.png"] == "auto"
    assert len(list((tmp_path / "pred" / "overlays").glob("*.png"))) == len(list(images.iterdir()))

    merged = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(run), str(merged)])
    assert result.exit_code == 0, result.output
    assert (merged / "config.json").is_file()
    result = runner.invoke(app, ["merge", str(run), str(merged)])
    assert result.exit_code == 2 and "already exists" in result.output


def test_errors_are_one_clear_line(shapes_dataset: Path, tmp_path: Path) -> None:
    config = _write_config(tmp_path, shapes_dataset)
    result = runner.invoke(app, ["train", str(config), "--set", "train.lrr=1"])
    assert result.exit_code == 2 and "unknown config key 'train.lrr'" in result.output

    result = runner.invoke(app, ["train", str(config), "--set", f"data.root={tmp_path / 'nowhere'}"])
    assert result.exit_code == 2 and "nowhere" in result.output

    result = runner.invoke(app, ["evaluate", str(tmp_path / "no-run")])
    assert result.exit_code == 2 and "no medpeft checkpoint" in result.output

    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    result = runner.invoke(app, ["info", str(config), "--set", f"data.root={empty}"])
    assert result.exit_code == 2 and "empty dataset" in result.output


def test_evaluate_rotate_in_plane(shapes_dataset: Path, tmp_path: Path) -> None:
    from medpeft.data.dataset import SegmentationDataset
    from medpeft.data.readers import read_dataset

    records, labels = read_dataset(shapes_dataset)
    plain = SegmentationDataset(records[:2], labels, 64, prompt_sampling="eval")
    turned = SegmentationDataset(records[:2], labels, 64, prompt_sampling="eval", rotate_deg=90.0)
    # ndimage rotates counter-clockwise for a positive angle on (rows, cols) = (y, x) images
    assert torch.equal(
        turned[0]["masks"], torch.from_numpy(np.rot90(plain[0]["masks"].numpy(), 1, axes=(1, 2)).copy())
    )

    config = _write_config(tmp_path, shapes_dataset, epochs=1, max_steps=1)
    assert runner.invoke(app, ["train", str(config)]).exit_code == 0
    out = tmp_path / "eval"
    result = runner.invoke(
        app, ["evaluate", str(tmp_path / "run"), "--out", str(out), "--rotate", "--angles", "30"]
    )
    assert result.exit_code == 0, result.output
    table = json.loads((out / "rotation.json").read_text())
    assert table["angle_deg"] == 30.0 and set(table["per_class"]) == {"disc", "square"}
    for r in table["per_class"].values():
        assert r["drop"] == pytest.approx(r["dice"] - r["dice_rotated"])
    assert (out / "rotation.png").is_file() and "rotated 30 degrees in-plane" in result.output
    result = runner.invoke(
        app, ["evaluate", str(tmp_path / "run"), "--out", str(out), "--rotate", "--angles", "x"]
    )
    assert result.exit_code == 2 and "--angles 'x'" in result.output
