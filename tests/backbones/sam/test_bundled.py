"""The foundation shipped in the package: loader checks (on a stand-in) and the real file's documented figures."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from medpeft.backbones.sam import bundled
from medpeft.backbones.sam.loading import load_sam

SHIPPED = Path(bundled.__file__).resolve().parents[3] / "weights"


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch) -> Path:
    """A bundled `sam-mini-med` made of a float16 sam-tiny, in a temporary weights folder."""
    torch.manual_seed(0)
    model, _ = load_sam("sam-tiny", 64)
    path = tmp_path / "sam-mini-med.safetensors"
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(path))
    manifest = {
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "preset": "sam-tiny",
        "image_size": 64,
    }
    (tmp_path / "sam-mini-med.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(bundled, "weights_dir", lambda: tmp_path)
    return path


def test_bundled_base_loads_as_pretrained_float32(stand_in: Path) -> None:
    model, identity = load_sam("sam-mini-med", 64)
    assert identity.kind == "bundled" and identity.random_init is False
    assert all(p.dtype == torch.float32 for p in model.parameters())
    again, identity2 = load_sam("sam-mini-med", 64)
    assert identity2.sha256 == identity.sha256  # the same weights every time, unlike a preset


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing", "manifest"])
def test_damaged_bundled_weights_are_one_error_naming_the_file(
    stand_in: Path, damage: str, tmp_path: Path
) -> None:
    if damage == "flip":
        raw = bytearray(stand_in.read_bytes())
        raw[-10] ^= 0xFF
        stand_in.write_bytes(bytes(raw))
    elif damage == "truncate":
        stand_in.write_bytes(stand_in.read_bytes()[:1000])
    elif damage == "missing":
        stand_in.unlink()
    else:
        (tmp_path / "sam-mini-med.json").unlink()
    with pytest.raises(bundled.BundledWeightsError, match="reinstall") as err:
        load_sam("sam-mini-med", 64)
    named = "sam-mini-med.json" if damage == "manifest" else str(stand_in)
    assert named in str(err.value)


def test_cli_says_so_in_one_line(stand_in: Path, shapes_dataset: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medpeft.cli import app

    stand_in.write_bytes(b"")
    result = CliRunner().invoke(
        app,
        [
            "info",
            "--set",
            "model.base=sam-mini-med",
            "--set",
            "model.image_size=64",
            str(_config(tmp_path, shapes_dataset)),
        ],
    )
    assert result.exit_code == 2 and str(stand_in) in result.output and "Traceback" not in result.output


def _config(tmp_path: Path, data: Path) -> Path:
    import yaml

    from conftest import tiny_config_dict

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(tiny_config_dict(data, tmp_path / "run")))))
    return path


@pytest.mark.skipif(
    not (SHIPPED / "sam-mini-med.json").is_file(), reason="no bundled weights in this checkout"
)
def test_shipped_foundation_matches_its_model_card(tmp_path: Path) -> None:
    """The file that ships: its hash, parameter count, and zero-shot Dice on the bundled demo slices."""
    manifest = json.loads((SHIPPED / "sam-mini-med.json").read_text())
    weights = SHIPPED / manifest["file"]
    assert weights.stat().st_size <= 10 * 2**20
    model, identity = load_sam("sam-mini-med", manifest["image_size"])
    assert identity.sha256 == manifest["weights_sha256"]
    assert sum(p.numel() for p in model.parameters()) == manifest["parameters"] == 4_077_056
    card = (SHIPPED / "MODEL_CARD.md").read_text()
    assert f"{manifest['parameters']:,} parameters" in card and manifest["sha256"] in card

    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bundle", Path(__file__).parents[3] / "scripts" / "bundle_foundation.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not module.DEMO_DATA.is_dir():
        pytest.skip("demo_data/ is not beside the package")
    measured = module.demo_zero_shot(manifest["image_size"])
    assert measured["mean"] == pytest.approx(manifest["demo_zero_shot_dice_box"]["mean"], abs=1e-3)
    assert f"{measured['mean']:.3f}" in card


def test_shipped_files_are_packaged() -> None:
    import tomllib

    data = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["medpeft"]
    assert {"weights/*.safetensors", "weights/*.json", "weights/*.md"} <= set(patterns)


@pytest.mark.parametrize(
    "adapters",
    [
        [{"name": "lora", "r": 2}, {"name": "decoder"}],
        [{"name": "vector_lora", "r_max": 4, "r_min": 2}],
        [{"name": "svd"}, {"name": "layernorm"}, {"name": "pos_embed"}],
        [{"name": "bias"}],
        [{"name": "attention_weights"}, {"name": "decoder"}],
        [{"name": "full"}],
    ],
    ids=lambda a: "+".join(m["name"] for m in a),
)
def test_every_method_trains_on_the_bundled_base(stand_in: Path, adapters: list[dict]) -> None:
    from medpeft.config import parse_config
    from medpeft.engine.build import build_model
    from medpeft.models.prompts import Prompts

    cfg = parse_config({"model": {"base": "sam-mini-med", "image_size": 64}, "adapters": adapters})
    model, identity = build_model(cfg, ["a", "b"])
    assert identity.kind == "bundled"
    boxes = torch.tensor([[[4.0, 4.0, 40.0, 40.0], [10.0, 10.0, 60.0, 50.0]]])
    logits = model(torch.randn(1, 3, 64, 64), Prompts(boxes=boxes, class_ids=torch.arange(2)[None]))
    logits.mean().backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
