"""Self-supervised depth (monodepth2 / DARES): sequence reading, view synthesis on a rendered scene,
SSIM / MS-SSIM maps, auto-masking, DARES's Vector-LoRA ranks, and a short run that learns depth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medpeft.config import parse_config
from medpeft.data.io import DataError
from medpeft.data.sequences import read_sequences, samples
from medpeft.data.synthetic import Surface, make_video_dataset, render
from medpeft.models.reprojection import pose_matrix, reproject
from medpeft.tasks.selfsup_loss import automask, ms_ssim_map, photometric_error

K = np.array([[63.0, 0.0, 34.5], [0.0, 63.0, 27.5], [0.0, 0.0, 1.0]])


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float32)


def _img(a: np.ndarray) -> torch.Tensor:
    return _t(a).permute(2, 0, 1)[None]


def test_warping_with_true_depth_and_pose_recreates_the_target() -> None:
    surface = Surface.random(np.random.default_rng(0))
    target_centre, source_centre = np.zeros(3), np.array([0.08, 0.03, 0.02])
    target, depth = render(surface, target_centre, K, 56, 70)
    source, _ = render(surface, source_centre, K, 56, 70)

    def error(depth_map: np.ndarray, translation: np.ndarray) -> float:
        pose = pose_matrix(torch.zeros(1, 3), _t(translation)[None])
        warped, valid = reproject(_img(source), _t(depth_map)[None, None], pose, _t(K)[None])
        assert valid.float().mean() > 0.8
        return float(photometric_error(warped, _img(target), "ssim", 0.85)[valid].mean())

    true = error(depth, target_centre - source_centre)  # target camera -> source camera
    assert true < 0.01
    assert error(depth, source_centre - target_centre) > 10 * true  # wrong pose
    assert error(depth * 0.5, target_centre - source_centre) > 5 * true  # wrong depth
    inverse = pose_matrix(torch.tensor([[0.1, -0.2, 0.05]]), torch.tensor([[0.3, 0.1, -0.2]]), invert=True)
    forward = pose_matrix(torch.tensor([[0.1, -0.2, 0.05]]), torch.tensor([[0.3, 0.1, -0.2]]))
    assert torch.allclose(inverse @ forward, torch.eye(4)[None], atol=1e-6)


def test_ssim_error_matches_a_hand_computed_case() -> None:
    a, b = torch.full((1, 3, 9, 9), 0.2), torch.full((1, 3, 9, 9), 0.6)
    c1 = 0.01**2
    ssim = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)  # flat images: luminance term only
    expected = 0.85 * (1 - ssim) / 2 + 0.15 * 0.4
    error = photometric_error(a, b, "ssim", 0.85)
    assert error.shape == (1, 1, 9, 9)
    assert torch.allclose(error[..., 2:-2, 2:-2], torch.tensor(expected), atol=1e-5)


def test_ms_ssim_is_a_per_pixel_map() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 96, 96, generator=gen)
    y = x.clone()
    y[..., :16, :16] = torch.rand(1, 3, 16, 16, generator=gen)  # changed in one corner only
    m = ms_ssim_map(x, y)
    assert m.shape == (1, 1, 96, 96)
    assert float(m[..., :12, :12].mean()) < 0.5 and float(m[..., -20:, -20:].min()) > 0.999
    err = photometric_error(y, x, "ms_ssim", 0.9)
    assert float(err[..., :12, :12].mean()) > 10 * float(err[..., -20:, -20:].mean())


def test_automask_drops_a_static_pair_entirely() -> None:
    frame = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    identity = photometric_error(frame, frame * 0.9, "ssim")
    warped = reproject(
        frame, torch.full((2, 1, 20, 24), 2.0), torch.eye(4).repeat(2, 1, 1), _t(K)[None].repeat(2, 1, 1)
    )[0]
    assert not automask(photometric_error(warped, frame * 0.9, "ssim"), identity).any()  # static: no motion
    assert automask(photometric_error(frame * 0.9, frame * 0.9, "ssim"), identity).all()


def test_vector_lora_wraps_each_block_with_the_dares_rank_and_nothing_else() -> None:
    from medpeft.engine.build import build_model

    cfg = parse_config(
        {"task": "selfsup_depth", "model": {"base": "depth-anything-v2-small", "image_size": 56}}
    )
    model, _ = build_model(cfg, [])
    ranks = {}
    for name, p in model.named_parameters():
        if "lora_A" in name:
            layer = int(name.split(".layer.")[1].split(".")[0])
            ranks.setdefault(layer, set()).add((name.split(".attention.")[1].split(".")[0], p.shape[0]))
    expected = [14, 14, 12, 12, 10, 10, 8, 8, 8, 8, 8, 8]
    assert ranks == {i: {("q_proj", r), ("v_proj", r)} for i, r in enumerate(expected)}
    trainable = {
        n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad and n.startswith("depth.")
    }
    assert trainable == {"backbone", "neck", "head"}  # LoRA in the encoder, the DPT decoder (neck + head)
    assert all("lora_" in n for n, p in model.depth.dpt.backbone.named_parameters() if p.requires_grad)


def _sequence(root: Path, names: list[str], intrinsics: dict | None) -> Path:
    (root / "images").mkdir(parents=True)
    for n in names:
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "images" / n)
    if intrinsics is not None:
        (root / "intrinsics.json").write_text(json.dumps(intrinsics))
    return root


def test_sequence_layouts_and_their_errors(tmp_path: Path) -> None:
    seq = _sequence(
        tmp_path / "a" / "s1",
        ["f9.png", "f10.png", "f11.png"],
        {"fx": 0.5, "fy": 0.6, "cx": 0.5, "cy": 0.5, "normalized": True},
    )
    sequences = read_sequences(tmp_path / "a")
    assert [f.name for f in sequences[0].frames] == ["f9.png", "f10.png", "f11.png"]  # numbers as numbers
    assert np.allclose(sequences[0].intrinsics[0], [[15, 0, 15], [0, 12, 10], [0, 0, 1]])
    assert [(s.target, s.sources) for s in samples(sequences, [-1, 1])] == [(1, (0, 2))]
    with pytest.raises(DataError, match="has 3 frames; offsets \\[-2, 1\\] need at least 4"):
        samples(sequences, [-2, 1])
    (seq / "intrinsics.json").unlink()
    with pytest.raises(DataError, match="missing .*intrinsics.json: a sequence needs"):
        read_sequences(tmp_path / "a")
    _sequence(tmp_path / "b" / "s1", ["f1.png", "g2.png"], {"fx": 10, "fy": 10, "cx": 5, "cy": 5})
    with pytest.raises(DataError, match="do not follow one numbering"):
        read_sequences(tmp_path / "b")
    scared = tmp_path / "scared" / "dataset_1" / "keyframe_2"
    _sequence(scared / "data" / "left", ["000001.png", "000002.png"], None)
    (scared / "data" / "left" / "images").rename(scared / "data" / "left_tmp")
    (scared / "data" / "left").rmdir()
    (scared / "data" / "left_tmp").rename(scared / "data" / "left")
    (scared / "endoscope_calibration.yaml").write_text(
        "%YAML:1.0\nM1: !!opencv-matrix\n   rows: 3\n   cols: 3\n   dt: d\n   data: [ 1035.3, 0., 597.4, 0.,\n"
        "       1035.2, 520.9, 0., 0., 1. ]\nD1: !!opencv-matrix\n   rows: 1\n   cols: 5\n   dt: d\n   data: [0,0,0,0,0]\n"
    )
    (seq_ := read_sequences(tmp_path / "scared"))
    assert seq_[0].name == "dataset_1_keyframe_2" and seq_[0].intrinsics[0][1, 2] == pytest.approx(520.9)


def test_short_self_supervised_run_learns_depth(tmp_path: Path) -> None:
    from medpeft.engine.build import build_model
    from medpeft.engine.restore import load_trained
    from medpeft.engine.trainer import train
    from medpeft.tasks.base import make_task

    data = make_video_dataset(tmp_path / "video", sequences=1, frames=14, height=56, width=70)
    cfg = parse_config(
        {
            "task": "selfsup_depth",
            "model": {"base": "depth-anything-tiny", "image_size": 56},
            "data": {"root": str(data), "split": [1.0, 0.0, 0.0]},
            "depth": {"scale": 1.0},
            "selfsup": {"image_width": 70, "pose_encoder": "tiny", "scales": 2, "photometric": "ssim"},
            "adapters": [{"name": "full"}],
            "train": {
                "output_dir": str(tmp_path / "run"),
                "epochs": 30,
                "batch_size": 4,
                "lr": 1e-3,
                "warmup_steps": 3,
                "max_grad_norm": None,
                "schedule": "constant",
            },
        }
    )
    task = make_task(cfg)
    frames = task.dataset(
        task.splits().train, [], train=False
    )  # frames with ground truth (not trained on it)
    before = task.validate(build_model(cfg, [])[0], frames)
    result = train(cfg, progress=False)
    model, _, _ = load_trained(result.run_dir)
    after = task.validate(model, frames)
    losses = [h["loss"] for h in result.history if h.get("loss") is not None]
    assert losses[-1] < 0.7 * losses[0], losses
    print(f"self-supervised AbsRel {before:.3f} -> {after:.3f}, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert after < 0.7 * before, (before, after)


def test_evaluate_per_sequence_and_predict_strip(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medpeft.cli import app
    from medpeft.engine.trainer import train

    data = make_video_dataset(tmp_path / "video", sequences=2, frames=5, height=28, width=42)
    cfg = parse_config(
        {
            "task": "selfsup_depth",
            "model": {"base": "depth-anything-tiny", "image_size": 28},
            "data": {"root": str(data), "split": [1.0, 0.0, 0.0]},
            "depth": {"scale": 1.0},
            "selfsup": {"image_width": 42, "pose_encoder": "tiny", "scales": 1},
            "train": {"output_dir": str(tmp_path / "run"), "epochs": 1, "max_steps": 1, "batch_size": 2},
        }
    )
    train(cfg, progress=False)
    runner = CliRunner()
    result = runner.invoke(
        app, ["evaluate", str(tmp_path / "run"), "--split", "train", "--out", str(tmp_path / "ev")]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["task"] == "selfsup_depth" and summary["align"] == "median" and summary["images"] == 6
    assert set(summary["per_sequence"]) == {"seq00", "seq01"} and "seq01: AbsRel" in result.output
    result = runner.invoke(
        app, ["predict", str(tmp_path / "run"), str(data / "seq00" / "images"), "--out", str(tmp_path / "pr")]
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "pr" / "depth").iterdir())) == 5
    strip = Image.open(tmp_path / "pr" / "strip.png")
    assert strip.width == 5 * 160 and strip.height > 160  # five frames, each above its depth picture
    assert json.loads((tmp_path / "pr" / "predictions.json").read_text())["strip"] == "strip.png"


def test_merge_refuses_a_self_supervised_run(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medpeft.cli import app
    from medpeft.engine.trainer import train

    data = make_video_dataset(tmp_path / "video", sequences=1, frames=4, height=28, width=28)
    cfg = parse_config(
        {
            "task": "selfsup_depth",
            "model": {"base": "depth-anything-tiny", "image_size": 28},
            "data": {"root": str(data), "split": [1.0, 0.0, 0.0]},
            "selfsup": {"pose_encoder": "tiny", "scales": 1, "photometric": "ssim"},
            "train": {"output_dir": str(tmp_path / "run"), "epochs": 1, "max_steps": 1, "batch_size": 2},
        }
    )
    train(cfg, progress=False)
    result = CliRunner().invoke(app, ["merge", str(tmp_path / "run"), str(tmp_path / "merged")])
    assert result.exit_code == 2 and "self-supervised depth model" in result.output
    assert not (tmp_path / "merged").exists()
