"""ONNX export: two graphs per model (image encoder, prompt decoder) that onnxruntime runs to PyTorch's
logits for box, point and automatic prompts at batch 1 and 2, and ``predict --engine onnx``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import make_shapes_dataset, tiny_config_dict
from medpeft.cli import app

pytest.importorskip("onnxruntime")
runner = CliRunner()
TOL = 1e-4


def _train(root: Path, base: str) -> Path:
    data = make_shapes_dataset(root / "shapes", n=8)
    cfg = tiny_config_dict(data, root / "run", epochs=1, max_steps=2)
    cfg["model"] = {"base": base, "image_size": 64, "class_prompt": "learned"}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", str(root / "config.yaml")])
    assert result.exit_code == 0, result.output
    return root / "run"


@pytest.fixture(scope="module", params=["sam-tiny", "sam2-tiny"])
def exported(request, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(run, export folder, images) for a tiny SAM and a tiny SAM2 run, exported through the CLI."""
    root = tmp_path_factory.mktemp(request.param)
    run = _train(root, request.param)
    result = runner.invoke(app, ["export", str(run), str(root / "onnx")])
    assert result.exit_code == 0, result.output
    assert "max |onnxruntime - PyTorch|" in result.output
    return run, root / "onnx", root / "shapes" / "images"


def _prompts(kind: str, batch: int, gen: torch.Generator):
    from medpeft.models.prompts import Prompts

    ids = torch.arange(2).expand(batch, -1)
    corner = torch.randint(0, 30, (batch, 2, 2), generator=gen).float()
    if kind == "box":
        return Prompts(boxes=torch.cat([corner, corner + 20], -1), class_ids=ids)
    if kind == "point":
        points = torch.stack([corner + 10, corner + 25], 2)  # a positive and a negative click per class
        return Prompts(points=points, point_labels=torch.tensor([1, 0]).expand(batch, 2, 2), class_ids=ids)
    return Prompts(class_ids=ids)


@pytest.mark.parametrize("batch", [1, 2])
def test_onnxruntime_matches_pytorch(exported, batch: int) -> None:
    from medpeft.deploy.onnx import OnnxSegmenter
    from medpeft.engine.restore import load_trained

    run, folder, _ = exported
    model, _, _ = load_trained(run)
    onnx_model = OnnxSegmenter(folder)
    manifest = json.loads((folder / "medpeft_onnx.json").read_text())
    assert manifest["opset"] == 18 and manifest["label_names"] == ["disc", "square"]
    assert all(v < TOL for v in manifest["max_abs_difference"].values()), manifest["max_abs_difference"]
    gen = torch.Generator().manual_seed(batch)
    images = torch.randn(batch, 3, 64, 64, generator=gen)
    with torch.no_grad():
        for kind in ("box", "point", "auto"):
            prompts = _prompts(kind, batch, gen)
            theirs = onnx_model(images, prompts)
            ours = model(images, prompts)  # the unmerged checkpoint: the merge is checked too
            assert theirs.shape == ours.shape == (batch, 2, 64, 64)
            assert float((theirs - ours).abs().max()) < TOL, kind
            assert float(ours.std()) > 0  # not a constant output matching trivially


def test_predict_with_the_onnx_engine_matches_torch(exported, tmp_path: Path) -> None:
    run, folder, images = exported
    for engine, source in (("onnx", folder), ("torch", run)):
        out = tmp_path / engine
        result = runner.invoke(
            app, ["predict", str(source), str(images), "--out", str(out), "--engine", engine]
        )
        assert result.exit_code == 0, result.output
    for png in sorted((tmp_path / "torch" / "masks").iterdir()):
        ours = np.asarray(Image.open(png))
        theirs = np.asarray(Image.open(tmp_path / "onnx" / "masks" / png.name))
        assert (ours == theirs).mean() > 0.999, png.name


def test_export_refuses_what_it_did_not_write(exported, tmp_path: Path) -> None:
    run, folder, images = exported
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    result = runner.invoke(app, ["export", str(run), str(user)])
    assert result.exit_code == 2 and "not a medpeft ONNX export" in result.output
    assert (user / "notes.txt").read_text() == "keep me"
    again = runner.invoke(app, ["export", str(run), str(folder)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    wrong = runner.invoke(
        app, ["predict", str(run), str(images), "--engine", "onnx", "--out", str(tmp_path / "p")]
    )
    assert wrong.exit_code == 2 and "medpeft_onnx.json" in wrong.output and "Traceback" not in wrong.output
    bad = runner.invoke(app, ["export", str(run), str(tmp_path / "x"), "--format", "tflite"])
    assert bad.exit_code == 2 and "--format" in bad.output
    old = runner.invoke(app, ["export", str(run), str(tmp_path / "x"), "--opset", "12"])
    assert old.exit_code == 2 and "--opset 12" in old.output and not (tmp_path / "x").exists()
    for option, value in (("--engine", "tensorrt"), ("--max-upload-mb", "0")):
        served = runner.invoke(app, ["serve", str(run), option, value])
        assert served.exit_code == 2 and option in served.output and "Traceback" not in served.output


def test_a_volume_model_exports_with_and_without_its_text_token(tmp_path: Path) -> None:
    """SegVol plugs in: encoder + two decoder graphs (with / without the label-name token) match PyTorch."""
    from medpeft.config import parse_config
    from medpeft.deploy.onnx import MANIFEST, OnnxSegmenter, compare, export_graphs
    from medpeft.engine.build import build_model

    cfg = parse_config(
        {"model": {"base": "segvol-tiny", "image_size": 32, "class_prompt": "learned"}, "adapters": []}
    )
    model, _ = build_model(cfg, ["liver", "spleen"])
    manifest = {"format": "medpeft-onnx", **export_graphs(model, tmp_path)}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    diffs = compare(model, OnnxSegmenter(tmp_path))
    assert set(diffs) == {"embeddings", "box", "point", "auto"}
    assert all(v < TOL for v in diffs.values()), diffs
