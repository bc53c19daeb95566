"""Depth must matter: on frames whose target is invisible in RGB but raised in a depth file, the
depth-guided model learns it through ``medpeft train`` and the RGB-only ablation cannot; ``medpeft
predict`` then draws the curves beside the depth it used."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from medpeft.cli import app
from medpeft.data.synthetic import make_depth_matters_dataset

runner = CliRunner()


def _config(tmp_path: Path, data: Path, source: str) -> Path:
    cfg = {
        "model": {
            "base": "sam2-tiny",
            "image_size": 128,
            "depth_guided": {"depth_source": source, "width": 32},
        },
        "data": {"root": str(data), "split": [0.75, 0.25, 0.0], "augment": {"hflip_p": 0.5}},
        "prompts": {"train_modes": {"auto": 1.0}, "eval_mode": "auto"},
        "adapters": [{"name": "decoder"}],
        "train": {
            "output_dir": str(tmp_path / f"run_{source}"),
            "epochs": 10,
            "batch_size": 4,
            "lr": 3e-3,
            "warmup_steps": 5,
        },
    }
    path = tmp_path / f"{source}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    tmp_path = tmp_path_factory.mktemp("depth_matters")
    data = make_depth_matters_dataset(tmp_path / "data", n=32, size=128)
    scores = {}
    for source in ("file", "none"):
        result = runner.invoke(app, ["train", str(_config(tmp_path, data, source))])
        assert result.exit_code == 0, result.output
        run = tmp_path / f"run_{source}"
        best = json.loads((run / "best.json").read_text())["checkpoint"]
        scores[source] = json.loads((run / best / "adapter.json").read_text())["val_dice"]
    return tmp_path, scores


def test_depth_guided_learns_what_rgb_alone_cannot(trained: tuple[Path, dict[str, float]]) -> None:
    _, scores = trained
    assert scores["file"] >= 0.8, scores
    # chance: the disc covers 6-18% of a frame, so "everything" scores Dice ~0.2
    assert scores["none"] < 0.45, scores


def test_predict_draws_curves_beside_the_depth_file(trained: tuple[Path, dict[str, float]]) -> None:
    tmp_path, _ = trained
    data = tmp_path / "data"
    out = tmp_path / "pred"
    result = runner.invoke(
        app, ["predict", str(tmp_path / "run_file"), str(data / "images"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "predictions.json").read_text())
    assert len(report["images"]) == 32 and not report["failed"]
    overlay = Image.open(out / "overlays" / "frame000.png")
    assert overlay.width > 1.8 * overlay.height  # frame and depth side by side
    pred = np.asarray(Image.open(out / "masks" / "frame000.png")) > 0
    truth = np.asarray(Image.open(data / "masks" / "frame000.png")) > 0
    assert 2 * (pred & truth).sum() / (pred.sum() + truth.sum()) > 0.7

    elsewhere = tmp_path / "frames"
    elsewhere.mkdir()
    (elsewhere / "x.png").write_bytes((data / "images" / "frame000.png").read_bytes())
    result = runner.invoke(
        app, ["predict", str(tmp_path / "run_file"), str(elsewhere), "--out", str(tmp_path / "p2")]
    )
    assert result.exit_code == 2 and "x.png: no depth map" in result.output and "--depth DIR" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(
        app,
        [
            "predict",
            str(tmp_path / "run_file"),
            str(elsewhere),
            "--out",
            str(tmp_path / "p3"),
            "--depth",
            str(elsewhere),
        ],
    )
    assert result.exit_code == 2 and "x.png has PIL mode 'RGB'" in result.output  # the frame is no depth map
    (elsewhere.parent / "d").mkdir()
    (elsewhere.parent / "d" / "x.png").write_bytes((data / "depth" / "frame000.png").read_bytes())
    result = runner.invoke(
        app,
        [
            "predict",
            str(tmp_path / "run_file"),
            str(elsewhere),
            "--out",
            str(tmp_path / "p4"),
            "--depth",
            str(elsewhere.parent / "d"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        np.asarray(Image.open(tmp_path / "p4" / "masks" / "x.png"))
        == np.asarray(Image.open(out / "masks" / "frame000.png"))
    ).all()
