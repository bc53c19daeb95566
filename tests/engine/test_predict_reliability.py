"""`medpeft predict` reliability: prompt-file checks, a batch that survives bad files, safe output folders."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import make_shapes_dataset, tiny_config_dict
from medpeft.cli import app

runner = CliRunner()
N_IMAGES = 3  # the shapes images are 64x64


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One tiny run per module (one step) and a small folder of its images: (run dir, images dir)."""
    root = tmp_path_factory.mktemp("predict")
    data = make_shapes_dataset(root / "shapes", n=8)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(data, root / "run", epochs=1, max_steps=1)))
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 0, result.output
    images = root / "inputs"
    images.mkdir()
    for p in sorted((data / "images").iterdir())[:N_IMAGES]:
        shutil.copy(p, images / p.name)
    return root / "run", images


def _predict(run: Path, inputs: Path, out: Path, *extra: str):
    return runner.invoke(app, ["predict", str(run), str(inputs), "--out", str(out), *extra])


BAD_PROMPTS = {
    "top_level_list": ([{"img000.png": {}}], ["JSON object", "list"]),
    "entry_not_object": ({"img000.png": [10, 10, 40, 40]}, ["'img000.png'", "[10, 10, 40, 40]", "object"]),
    "unknown_key": (
        {"img000.png": {"bxes": {"disc": [10, 10, 40, 40]}}},
        ["'img000.png'", "'bxes'", "boxes", "points"],
    ),
    "unmatched_image": (
        {"scan42.png": {"boxes": {"disc": [10, 10, 40, 40]}}},
        ["'scan42.png'", "img000.png"],
    ),
    "unknown_label": ({"img000": {"boxes": {"liver": [10, 10, 40, 40]}}}, ["'img000'", "'liver'", "disc"]),
    "inverted_box": (
        {"img000.png": {"boxes": {"disc": [40, 10, 10, 40]}}},
        ["'img000.png'", "boxes['disc']", "[40, 10, 10, 40]", "x1 < x2"],
    ),
    "negative_box": (
        {"img000.png": {"boxes": {"disc": [-5, 10, 40, 40]}}},
        ["'img000.png'", "boxes['disc']", "[-5, 10, 40, 40]", "negative"],
    ),
    "box_outside_image": (
        {"img001.png": {"boxes": {"square": [10, 10, 100, 40]}}},
        ["'img001.png'", "boxes['square']", "[10, 10, 100, 40]", "outside", "64x64"],
    ),
    "box_not_four_numbers": (
        {"img000.png": {"boxes": {"disc": [10, 10, 40]}}},
        ["'img000.png'", "boxes['disc']", "[10, 10, 40]", "4 numbers"],
    ),
    "flat_point": (
        {"img000.png": {"points": {"disc": [30, 15, 1]}}},
        ["'img000.png'", "points['disc']", "[30, 15, 1]", "wrap", "[[30, 15, 1]]"],
    ),
    "point_label_7": (
        {"img000.png": {"points": {"disc": [[30, 15, 7]]}}},
        ["'img000.png'", "points['disc']", "[30, 15, 7]", "label 7", "1 (foreground) or 0"],
    ),
    "point_outside_image": (
        {"img000.png": {"points": {"disc": [[30, 15], [300, 150, 1]]}}},
        ["'img000.png'", "points['disc']", "[300, 150, 1]", "outside", "64x64"],
    ),
    "non_numeric_point": (
        {"img000.png": {"points": {"disc": [["30", 15, 1]]}}},
        ["'img000.png'", "points['disc']", '["30", 15, 1]', "numbers"],
    ),
    "non_numeric_box": (
        {"img000.png": {"boxes": {"disc": [10, "top", 40, 40]}}},
        ["'img000.png'", "boxes['disc']", '[10, "top", 40, 40]', "numbers"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_PROMPTS))
def test_bad_prompt_file_is_one_line_and_writes_nothing(
    trained: tuple[Path, Path], tmp_path: Path, case: str
) -> None:
    run, images = trained
    data, expected = BAD_PROMPTS[case]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(data))
    out = tmp_path / "pred"
    result = _predict(run, images, out, "--prompts", str(prompts))
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert str(prompts) in lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not out.exists()


def test_good_prompts_accepted(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run, images = trained
    prompts = tmp_path / "prompts.json"
    prompts.write_text(
        json.dumps(
            {
                "img000.png": {"boxes": {"disc": [0, 0, 64, 64]}},
                "img001": {"points": {"disc": [[30, 15], [3.5, 60, 0]], "square": [[64, 64, 1]]}},
            }
        )
    )
    out = tmp_path / "pred"
    result = _predict(run, images, out, "--prompts", str(prompts))
    assert result.exit_code == 0, result.output
    assert f"{N_IMAGES} image(s) and 0 volume(s) written, 0 failed" in result.output
    report = json.loads((out / "predictions.json").read_text())
    modes = {Path(r["image"]).name: r["prompt_mode"] for r in report["images"]}
    assert modes == {"img000.png": "box", "img001.png": "point", "img002.png": "auto"}
    assert report["format"] == "medpeft-predictions" and report["failed"] == [] and report["complete"]


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_batch_skips_unreadable_files(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run, good = trained
    inputs = tmp_path / "inputs"
    shutil.copytree(good, inputs)
    data = (good / "img000.png").read_bytes()
    (inputs / "broken.png").write_bytes(data[: len(data) // 2])
    (inputs / "notes.png").write_text("this is not an image\n")
    before = _digests(inputs)
    out = tmp_path / "pred"
    result = _predict(run, inputs, out)
    assert result.exit_code == 1, result.output
    assert f"{N_IMAGES} image(s) and 0 volume(s) written, 2 failed:" in result.output
    assert "broken.png" in result.output and "notes.png" in result.output
    for name in ("img000", "img001", "img002"):
        assert np.array(Image.open(out / "masks" / f"{name}.png")).shape == (64, 64)
        assert (out / "overlays" / f"{name}.png").is_file()
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["img000.png", "img001.png", "img002.png"]
    report = json.loads((out / "predictions.json").read_text())
    assert len(report["images"]) == N_IMAGES
    failed = {Path(f["image"]).name: f["error"] for f in report["failed"]}
    assert set(failed) == {"broken.png", "notes.png"}
    assert all(err and "\n" not in err for err in failed.values())
    assert _digests(inputs) == before


def test_all_files_failing_still_writes_report(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = trained
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a.png").write_text("not a png")
    (inputs / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "pred"
    result = _predict(run, inputs, out)
    assert result.exit_code == 1, result.output
    assert "0 image(s) and 0 volume(s) written, 2 failed:" in result.output
    report = json.loads((out / "predictions.json").read_text())
    assert report["images"] == [] and [Path(f["image"]).name for f in report["failed"]] == ["a.png", "b.png"]


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_user_folder_is_never_replaced(trained: tuple[Path, Path], tmp_path: Path, flags: list[str]) -> None:
    run, images = trained
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    result = _predict(run, images, out, *flags)
    assert result.exit_code == 2, result.output
    assert "already holds files" in result.output and str(out) in result.output
    assert "not a medpeft prediction output" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "my notes"


def test_earlier_prediction_replaced_only_with_overwrite(trained: tuple[Path, Path], tmp_path: Path) -> None:
    run, images = trained
    out = tmp_path / "pred"
    assert _predict(run, images, out).exit_code == 0
    stale = out / "masks" / "old_scan.png"
    shutil.copy(out / "masks" / "img000.png", stale)
    before = (out / "predictions.json").read_text()

    result = _predict(run, images, out)
    assert result.exit_code == 2, result.output
    assert "already holds files" in result.output and "--overwrite" in result.output
    assert stale.is_file() and (out / "predictions.json").read_text() == before

    result = _predict(run, images, out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["img000.png", "img001.png", "img002.png"]
    report = json.loads((out / "predictions.json").read_text())
    assert report["format"] == "medpeft-predictions" and len(report["images"]) == N_IMAGES


def test_overwrite_refuses_prediction_folder_with_user_files(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    run, images = trained
    out = tmp_path / "pred"
    assert _predict(run, images, out).exit_code == 0
    (out / "notes.txt").write_text("my notes")
    result = _predict(run, images, out, "--overwrite")
    assert result.exit_code == 2, result.output
    assert "notes.txt" in result.output
    assert (out / "notes.txt").read_text() == "my notes" and (out / "masks" / "img000.png").is_file()


def test_batch_mixes_images_and_volumes_and_reports_each_file(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """A folder of 2D images and NIfTI volumes, one volume corrupt: the rest is written (label maps on each
    volume's grid), the corrupt one is listed, ``predictions.csv`` has one row per file; a ``.txt`` list
    names files the same way."""
    import csv

    import nibabel as nib

    run, good = trained
    inputs = tmp_path / "inputs"
    shutil.copytree(good, inputs)
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    volume = np.random.default_rng(0).normal(100, 20, (64, 64, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, affine), str(inputs / "scan.nii.gz"))
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "pred"
    result = _predict(run, inputs, out)
    assert result.exit_code == 1, result.output
    assert f"{N_IMAGES} image(s) and 1 volume(s) written, 1 failed:" in result.output
    written = nib.load(str(out / "volumes" / "scan.nii.gz"))
    assert written.shape == (64, 64, 3) and np.allclose(written.affine, affine)
    rows = {Path(r["file"]).name: r for r in csv.DictReader((out / "predictions.csv").open())}
    assert set(rows) == {"img000.png", "img001.png", "img002.png", "scan.nii.gz", "broken.nii.gz"}
    assert rows["broken.nii.gz"]["status"] == "failed" and rows["broken.nii.gz"]["error"]
    assert rows["scan.nii.gz"]["kind"] == "volume" and rows["scan.nii.gz"]["status"] == "ok"
    report = json.loads((out / "predictions.json").read_text())
    pixels = {Path(e["image"]).name: e["pixels"]["disc"] for e in report["images"]}
    assert (
        int(rows["img000.png"]["n_disc"]) == pixels["img000.png"] and float(rows["img000.png"]["seconds"]) > 0
    )
    assert int(rows["scan.nii.gz"]["n_disc"]) == report["volumes"][0]["voxels"]["disc"]
    listing = tmp_path / "batch.txt"
    listing.write_text("# two of them\ninputs/img001.png\ninputs/scan.nii.gz\n")
    again = _predict(run, listing, tmp_path / "pred2")
    assert again.exit_code == 0, again.output
    assert "1 image(s) and 1 volume(s) written, 0 failed" in again.output


def test_next_click_lands_in_the_largest_error_region() -> None:
    from medpeft.tasks.segmentation_clicks import next_click

    truth = np.zeros((40, 40), bool)
    truth[10:30, 10:20] = True  # a 20 x 10 object
    pred = np.zeros_like(truth)
    pred[10:30, 10:14] = True  # its left part found: the missed part is rows 10-29, columns 14-19
    x, y, label = next_click(pred, truth)
    assert label == 1 and 14 <= x <= 19 and 10 <= y <= 29 and abs(y - 19.5) <= 1 and abs(x - 16.5) <= 1
    pred[0:9, 25:40] = True  # a larger spurious region (9 x 15 = 135 > 20 x 6): a negative click there
    x, y, label = next_click(pred, truth)
    assert label == 0 and 25 <= x <= 39 and 0 <= y <= 8
    assert next_click(truth, truth) is None


def test_clicks_refine_the_mask(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """evaluate --clicks: Dice after each click, from one point; on average it does not fall from click 1 to
    click 5, with the previous logits fed back as the mask input."""
    run, _ = trained
    out = tmp_path / "eval"
    result = runner.invoke(
        app, ["evaluate", str(run), "--split", "all", "--prompt", "point", "--clicks", "5", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    clicks = json.loads((out / "clicks" / "clicks.json").read_text())
    assert (
        clicks["start"] == "point" and len(clicks["mean"]) == 5 and (out / "clicks" / "clicks.png").is_file()
    )
    assert clicks["mean"][4] >= clicks["mean"][0] - 1e-6, clicks["mean"]
    assert clicks["mask_input"] is True
    plain = runner.invoke(
        app,
        [
            "evaluate",
            str(run),
            "--split",
            "all",
            "--prompt",
            "box",
            "--clicks",
            "2",
            "--no-mask-input",
            "--out",
            str(tmp_path / "plain"),
        ],
    )
    assert plain.exit_code == 0, plain.output
    second = json.loads((tmp_path / "plain" / "clicks" / "clicks.json").read_text())
    assert second["start"] == "box" and second["mask_input"] is False
    bad = runner.invoke(app, ["evaluate", str(run), "--clicks", "-1"])
    assert bad.exit_code != 0 and "--clicks -1" in bad.output
