"""The 3D task end to end on a synthetic MSD-layout dataset: whole volumes with 3D prompts, training
that learns, evaluate --volumes under several prompt configurations and inference modes, predict on
NIfTI, and a merged model reused as a base."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from medpeft.cli import app
from medpeft.config import parse_config
from medpeft.data.prompt_sampling import center_point, mask_to_box
from medpeft.data.synthetic import make_volume_dataset
from medpeft.data.volume_dataset import VolumeCase, VolumeDataset, dataset_cases, split_cases
from medpeft.engine.build import build_model

RUNNER = CliRunner()


def test_3d_prompts_are_in_array_order() -> None:
    mask = np.zeros((6, 8, 10), bool)
    mask[1:3, 2:6, 4:9] = True
    assert mask_to_box(mask).tolist() == [1, 2, 4, 2, 5, 8]  # (z0, y0, x0, z1, y1, x1), inclusive
    z, y, x = center_point(mask)
    assert mask[int(z), int(y), int(x)]
    assert mask_to_box(mask[0]).tolist() == [0, 0, 0, 0]  # an empty 2D mask stays the 2D layout


def test_frames_of_one_patient_share_a_split(tmp_path) -> None:
    cases = [
        VolumeCase(tmp_path / f"patient{p:03d}_frame{f:02d}.nii.gz", None, (("x", (1,)),))
        for p in range(10)
        for f in (1, 12)
    ]
    parts = split_cases(cases, (0.6, 0.2, 0.2), seed=0)
    for name, part in parts.items():
        others = [c.subject for k, v in parts.items() if k != name for c in v]
        assert part and not {c.subject for c in part} & set(others)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_volume_dataset(tmp_path_factory.mktemp("vol") / "synthetic", n=10, shape=(40, 32, 16))


def test_items_carry_every_class_with_3d_prompts(synthetic) -> None:
    cases, labels = dataset_cases(synthetic)
    assert labels == ["ball", "block"]
    ds = VolumeDataset(cases, labels, (8, 32, 32), train=False, n_pos_points=1, n_neg_points=1)
    item = ds[0]
    assert item["image"].shape == (1, 8, 32, 32) and item["masks"].shape == (2, 8, 32, 32)
    for c in range(2):
        mask = item["masks"][c].numpy() > 0.5
        assert item["box_valid"][c] and item["boxes"][c].tolist() == mask_to_box(mask).tolist()
        z, y, x = item["points"][c, 0].long().tolist()
        assert mask[z, y, x] and item["point_labels"][c].tolist() == [1, 0]
    crops = VolumeDataset(cases, labels, (8, 16, 16), train=True, zoom_in=1.0)
    crop = crops[0]  # a full-resolution window around one class: a block of the volume, unresized
    assert crop["image"].shape == (1, 8, 16, 16) and crop["masks"].sum() > 0
    image = torch.from_numpy(crops.arrays(0)[0])
    windows = image.unfold(0, 8, 1).unfold(1, 16, 1).unfold(2, 16, 1)  # every 8x16x16 block
    assert (windows == crop["image"][0]).flatten(3).all(-1).any()
    wide = VolumeDataset(cases, labels, (8, 48, 48), train=True, zoom_in=1.0)[0]  # wider than the volume
    assert wide["image"].shape == (1, 8, 48, 48)
    assert wide["image"][0, :, :8].abs().sum() == 0 and wide["image"][0, :, :, :4].abs().sum() == 0  # padded


def test_rotation_augmentation_turns_volume_and_labels_together(synthetic) -> None:
    cases, labels = dataset_cases(synthetic)
    plain = VolumeDataset(cases, labels, (8, 32, 32), train=True, zoom_in=0.0)[0]
    turned = VolumeDataset(
        cases, labels, (8, 32, 32), train=True, zoom_in=0.0, rotate_p=1.0, rotate_max_deg=45
    )[0]
    assert not torch.equal(plain["image"], turned["image"]) and not torch.equal(
        plain["masks"], turned["masks"]
    )
    bright = turned["image"][0] > 0.6  # the ball is the bright object: its voxels moved with the image
    ball = turned["masks"][0] > 0.5
    assert (bright & ball).sum() > 0.7 * ball.sum()


def _config(tmp_path, synthetic, **extra) -> dict:
    cfg = {
        "model": {"base": "segvol-tiny", "image_size": 32},
        "data": {"root": str(synthetic), "split": [0.8, 0.1, 0.1], "zoom_in": 0.3},
        "prompts": {"train_modes": {"text": 0.4, "box": 0.3, "point": 0.3}, "eval_mode": "box"},
        "adapters": [{"name": "full"}],
        "loss": {"dice": 1.0, "bce": 0.2},
        "train": {
            "epochs": 25,
            "batch_size": 2,
            "lr": 2.0e-3,
            "warmup_steps": 5,
            "output_dir": str(tmp_path / "run"),
        },
    }
    cfg.update(extra)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic):
    tmp = tmp_path_factory.mktemp("run")
    result = RUNNER.invoke(app, ["train", str(_config(tmp, synthetic))])
    assert result.exit_code == 0, result.output
    return tmp / "run"


def test_training_learns_the_volumes(trained) -> None:
    import csv

    rows = [r for r in csv.DictReader((trained / "log.csv").open()) if r.get("val_dice")]
    scores = [float(r["val_dice"]) for r in rows]
    assert scores[-1] > 0.15 and max(scores) > scores[0] + 0.1  # box-prompted Dice of the zoom-out view


def test_evaluate_compares_prompts_and_inference(trained, synthetic, tmp_path) -> None:
    out = tmp_path / "eval"
    result = RUNNER.invoke(
        app,
        [
            "evaluate",
            str(trained),
            "--volumes",
            str(synthetic),
            "--prompt",
            "box,text,text+point",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inference"] == "zoom" and list(summary["prompts"]) == ["box", "text", "text+point"]
    assert summary["mean"]["dice"] == pytest.approx(summary["prompts"]["box"]["mean_dice"])
    rows = (out / "per_case.csv").read_text().splitlines()
    assert len(rows) == 1 + 10 * 2 * 3 and (out / "prompts.png").is_file()
    assert "Dice by prompt" in result.output
    sliding = RUNNER.invoke(
        app,
        [
            "evaluate",
            str(trained),
            "--volumes",
            str(synthetic),
            "--prompt",
            "box",
            "--inference",
            "sliding",
            "--out",
            str(tmp_path / "sliding"),
        ],
    )
    assert sliding.exit_code == 0, sliding.output
    assert json.loads((tmp_path / "sliding" / "summary.json").read_text())["inference"] == "sliding"
    bad = RUNNER.invoke(app, ["evaluate", str(trained), "--volumes", str(synthetic), "--inference", "fast"])
    assert bad.exit_code != 0 and "--inference 'fast' is not one of" in bad.output


def test_predict_writes_label_maps_on_the_input_grid(trained, synthetic, tmp_path) -> None:
    volume = synthetic / "imagesTr" / "synthetic_000.nii.gz"
    out = tmp_path / "pred"
    result = RUNNER.invoke(app, ["predict", str(trained), str(volume), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = nib.load(str(out / "volumes" / "synthetic_000.nii.gz"))
    source = nib.load(str(volume))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
    report = json.loads((out / "predictions.json").read_text())
    entry = report["volumes"][0]
    assert (
        report["task"] == "volume_segmentation"
        and entry["prompt_mode"] == "text"
        and entry["inference"] == "zoom"
    )
    # a box prompt (voxels of the file): only the prompted label is predicted, text is off
    truth = np.asarray(nib.load(str(synthetic / "labelsTr" / "synthetic_000.nii.gz")).dataobj) == 1
    lo, hi = np.argwhere(truth).min(0), np.argwhere(truth).max(0)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(
        json.dumps({"synthetic_000.nii.gz": {"boxes": {"ball": [*lo.tolist(), *hi.tolist()]}}})
    )
    boxed = RUNNER.invoke(
        app,
        ["predict", str(trained), str(volume), "--out", str(tmp_path / "boxed"), "--prompts", str(prompts)],
    )
    assert boxed.exit_code == 0, boxed.output
    entry = json.loads((tmp_path / "boxed" / "predictions.json").read_text())["volumes"][0]
    assert entry["prompt_mode"] == "boxes" and entry["voxels"]["block"] == 0
    z0, y0, x0, z1, y1, x1 = entry["roi"]  # the zoom-in region holds the box (model order z, y, x)
    assert z0 <= lo[2] and y0 <= lo[1] and x0 <= lo[0] and z1 > hi[2] and y1 > hi[1] and x1 > hi[0]
    images = tmp_path / "pngs"
    images.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(images / "a.png")
    bad = RUNNER.invoke(app, ["predict", str(trained), str(images), "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "a 3D model takes NIfTI volumes" in bad.output


def test_a_merged_model_is_a_base(trained, tmp_path) -> None:
    merged = tmp_path / "base"
    result = RUNNER.invoke(app, ["merge", str(trained), str(merged)])
    assert result.exit_code == 0, result.output
    cfg = parse_config(
        {"model": {"base": str(merged), "image_size": 32}, "adapters": [{"name": "lora", "r": 2}]}
    )
    assert cfg.model.backbone == "segvol" and cfg.task == "volume_segmentation"
    model, identity = build_model(cfg, ["ball", "block"])
    assert identity.kind == "local"
    from medpeft.engine.restore import load_trained

    trained_model, _, _ = load_trained(trained)
    x = torch.randn(1, 1, 8, 32, 32)
    with torch.no_grad():
        a = model.segvol.embed(x)
        b = trained_model.segvol.embed(x)
    torch.testing.assert_close(a, b)
    # its label vocabulary comes along: the merged head's tokens, matched by name (here in a new order)
    swapped, _ = build_model(cfg, ["block", "ball"])
    learned = trained_model.class_prompt.embedding.weight
    assert torch.equal(swapped.class_prompt.embedding.weight[0], learned[1])
    assert torch.equal(swapped.class_prompt.embedding.weight[1], learned[0])


def test_the_page_serves_a_3d_model(trained, synthetic) -> None:
    """serve on SegVol: label names segment the whole volume; a click on a slice is a 3D point; the
    download is a NIfTI on the input's grid holding what the page showed."""
    pytest.importorskip("fastapi")
    import gzip

    import nibabel as nib

    from medpeft.data.io import DataError
    from medpeft.deploy.serve import load_server

    server = load_server(trained)
    assert server.info()["volume_model"]
    with pytest.raises(DataError, match="3D model"):
        server.open("slice.png", b"\x89PNG")
    source = synthetic / "imagesTr" / "synthetic_000.nii.gz"
    opened = server.open(source.name, source.read_bytes())
    assert opened["kind"] == "volume" and opened["shape"] == [40, 32, 16]
    auto = server.segment({"id": opened["id"], "auto": True, "axis": 2, "index": 8})
    assert auto["segmented"] == "all labels" and sum(auto["pixels"].values()) > 0
    truth = np.asarray(nib.load(str(synthetic / "labelsTr" / source.name)).dataobj)
    x, y, z = (int(v) for v in np.argwhere(truth == 1).mean(0))
    # display column c <-> x = 39 - c, row r <-> y = 31 - r on an axial slice (RAS, identity affine)
    click = server.segment(
        {"id": opened["id"], "label": "ball", "axis": 2, "index": z, "points": [[39 - x, 31 - y, 1]]}
    )
    assert click["segmented"] == "ball" and click["pixels"]["ball"] > 0
    data, name, _ = server.mask(opened["id"])
    saved = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    labels = np.asarray(saved.dataobj)
    assert name == "synthetic_000_mask.nii.gz" and labels.shape == truth.shape
    assert np.allclose(saved.affine, np.eye(4))
    assert int((labels == 1).sum()) == click["pixels"]["ball"] and labels[x, y, z] == 1
