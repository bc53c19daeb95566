"""Depth must matter: on frames whose target is invisible in RGB but raised in a depth file, the
depth-guided model learns it through ``medpeft train`` and the RGB-only ablation cannot; ``medpeft
predict`` then draws the curves beside the depth it used."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
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


def test_merge_refuses_a_depth_guided_run_in_one_line(trained: tuple[Path, dict[str, float]]) -> None:
    tmp_path, _ = trained
    result = runner.invoke(app, ["merge", str(tmp_path / "run_file"), str(tmp_path / "merged")])
    assert result.exit_code == 2 and "depth-guided model (sam2 + fusion)" in result.output
    assert not (tmp_path / "merged").exists()


class _Oracle(torch.nn.Module):
    """Logits from the batch's own masks (or all negative): evaluation plumbing without a model."""

    def __init__(self, empty: bool) -> None:
        super().__init__()
        self.empty = empty
        self.masks: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, images: torch.Tensor, prompts=None) -> torch.Tensor:
        assert self.masks is not None
        return torch.full_like(self.masks, -9.0) if self.empty else self.masks * 18.0 - 9.0


def test_evaluate_scores_landmark_curves_with_stated_empty_conventions(tmp_path: Path) -> None:
    from medpeft.data.dataset import SegmentationDataset
    from medpeft.data.readers import read_dataset
    from medpeft.tasks import segmentation_eval

    root = tmp_path / "l3d"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.full((40, 30, 3), 90, np.uint8)).save(root / "images" / "a.png")
    for name, row in (("ridge", 5), ("silhouette", 20)):
        (root / "masks" / name).mkdir(parents=True)
        m = np.zeros((40, 30), np.uint8)
        m[row, 2:28] = 255
        Image.fromarray(m).save(root / "masks" / name / "a.png")
    records, labels = read_dataset(root, line_width=3)
    ds = SegmentationDataset(records, labels, 64, resize="resize", prompt_sampling="eval")
    for empty, status, assd in ((False, "ok", 0.0), (True, "pred_empty", float(np.hypot(40, 30)))):
        model = _Oracle(empty)
        model.masks = ds[0]["masks"][None]
        summary = segmentation_eval.evaluate(model, ds, "auto", tmp_path / f"eval{empty}", progress=False)
        assert summary["curve_status"] == {status: 2}
        assert summary["mean"]["curve_assd"] == pytest.approx(assd, abs=1e-6)
        table = segmentation_eval.format_table(summary)
        assert "curveASSD" in table and f"{status} 2" in table
        header = (tmp_path / f"eval{empty}" / "per_image.csv").read_text().splitlines()[0]
        assert "curve_assd" in header and "curve_status" in header


def test_depth_anything_weights_are_recorded_and_checked_on_load(tmp_path: Path) -> None:
    from medpeft.config import parse_config
    from medpeft.engine import checkpoint as ckpt
    from medpeft.engine.restore import load_trained
    from medpeft.engine.trainer import train

    data = make_depth_matters_dataset(tmp_path / "data", n=6, size=64)
    cfg = parse_config(
        {
            "model": {
                "base": "sam-tiny",
                "image_size": 64,
                "depth_guided": {
                    "depth_model": "depth-anything-tiny",
                    "width": 16,
                    "depth_adapters": [{"name": "lora", "r": 2}],
                },
            },
            "data": {"root": str(data), "split": [0.67, 0.33, 0.0]},
            "prompts": {"train_modes": {"box": 1.0}},
            "train": {"output_dir": str(tmp_path / "run"), "epochs": 1, "max_steps": 2, "batch_size": 2},
        }
    )
    train(cfg, progress=False)
    directory = ckpt.resolve_checkpoint(tmp_path / "run")
    record = ckpt.read_record(directory)
    assert record.depth_model is not None and record.depth_model.source == "depth-anything-tiny"
    model, _, _ = load_trained(directory)  # the same seeded preset: hashes agree
    assert any("lora_" in n for n, _ in model.depth.named_parameters())
    meta = directory / ckpt.RECORD_FILE
    edited = json.loads(meta.read_text())
    edited["depth_model"]["sha256"] = "0" * 64
    meta.write_text(json.dumps(edited))
    with pytest.raises(
        Exception, match=r"base model 'depth-anything-tiny' has weights hash .* trained on 000000"
    ):
        load_trained(directory)


def test_paper_config_trains_on_the_p2ilf_frame(tmp_path: Path) -> None:
    """configs/srft_galore_landmarks.yaml on tiny presets: GaLore-SRFT projects SAM2's attention
    matrices at rank 64 / gap 50, Depth Anything's LoRA and the fusion train, the curves are read."""
    from conftest import shared_data
    from medpeft.config import load_config
    from medpeft.engine.build import build_model, build_optimizer
    from medpeft.engine.trainer import train

    root = shared_data("p2ilf-sample")
    overrides = [
        "model.base=sam2-tiny",
        "model.image_size=64",
        "model.depth_guided.depth_model=depth-anything-tiny",
        "model.depth_guided.width=16",
        f"data.root={root}",
        "data.split=[1.0, 0.0, 0.0]",
        f"train.output_dir={tmp_path / 'run'}",
        "train.max_steps=2",
        "train.batch_size=1",
    ]
    cfg = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "srft_galore_landmarks.yaml", overrides
    )
    assert (cfg.optimizer.rank, cfg.optimizer.update_gap, cfg.train.lr) == (64, 50, 5e-5)
    model, _ = build_model(cfg, ["ridge", "ligament", "silhouette"])
    optimizer = build_optimizer(cfg, model)
    projected = [n for g in optimizer.param_groups if g.get("galore") for n in g["param_names"]]
    assert projected and all(
        n.startswith("rgb.sam.vision_encoder.backbone.blocks.") and ".attn." in n for n in projected
    )
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"rgb", "depth", "fusion", "decoder"}
    result = train(cfg, progress=False)
    assert result.steps == 2
