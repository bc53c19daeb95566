"""Volumes in and out: MONAI reading with orientation and spacing, NIfTI written back on the input's grid,
MSD dataset.json, a 2D model slice by slice, 3D scores with spacing, and the CLI on MSD Hippocampus."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import shared_data
from medpeft.cli import app
from medpeft.config import parse_config
from medpeft.data.io import DataError
from medpeft.data.volume_io import read_msd, read_volume, to_uint8, write_label_volume
from medpeft.data.volumes import from_display, to_display
from medpeft.engine.build import build_model
from medpeft.engine.volumes import box_on_slice, case_scores, segment_volume


def test_nifti_round_trip_keeps_affine_and_labels(tmp_path: Path) -> None:
    labels = np.random.default_rng(0).integers(0, 3, (4, 5, 6)).astype(np.int16)
    affine = np.diag([-2.0, -3.0, 4.0, 1.0])  # stored L-P-S: read as RAS by flipping x and y
    affine[:3, 3] = [10, 20, 30]
    nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / "a.nii.gz"))
    volume = read_volume(tmp_path / "a.nii.gz", label=True)
    assert np.array_equal(volume.array, labels[::-1, ::-1, :]) and volume.spacing == (2.0, 3.0, 4.0)
    assert np.allclose(volume.affine[:3, :3], np.diag([2.0, 3.0, 4.0]))
    write_label_volume(tmp_path / "out" / "p.nii.gz", volume.array, volume, {1: "liver", 2: "spleen"})
    back = nib.load(str(tmp_path / "out" / "p.nii.gz"))
    assert np.array_equal(np.asarray(back.dataobj), labels) and np.allclose(back.affine, affine)
    assert json.loads((tmp_path / "out" / "p.labels.json").read_text()) == {"1": "liver", "2": "spleen"}


def test_resampling_and_windows_by_hand(tmp_path: Path) -> None:
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[:2] = 1
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(tmp_path / "l.nii.gz"))
    half = read_volume(tmp_path / "l.nii.gz", spacing=(2.0, 1.0, 1.0), label=True)
    assert half.array.shape == (2, 4, 4) and half.spacing == (2.0, 1.0, 1.0)
    assert set(np.unique(half.array)) == {0, 1} and half.array[0].all() and not half.array[1].any()
    assert to_uint8(np.array([[[-160.0, 40.0, 240.0, 1000.0]]]), "abdomen").tolist() == [[[0, 128, 255, 255]]]
    mr = np.zeros((2, 2, 4), np.float32)
    mr[0, 0] = [1.0, 2.0, 3.0, 4.0]  # non-zero voxels: mean 2.5, std 1.118; zeros (air) stay out
    z = to_uint8(mr, "zscore")
    assert z[0, 0].tolist() == [np.round((v - 2.5) / 1.1180340 / 6 * 255 + 127.5) for v in (1, 2, 3, 4)]
    with pytest.raises(DataError, match="unknown CT window 'liver'"):
        to_uint8(np.zeros((1, 1, 1)), "liver")


def test_msd_dataset_json_both_layouts_and_errors(tmp_path: Path) -> None:
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "imagesTr" / "a.nii.gz").write_bytes(b"")
    meta = {
        "labels": {"0": "background", "1": "tumour"},
        "modality": {"0": "CT"},
        "training": [{"image": "./imagesTr/a.nii.gz", "label": None}],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    cases, table, modalities = read_msd(tmp_path)
    assert (
        cases == [(tmp_path / "imagesTr" / "a.nii.gz", None)]
        and table == {1: "tumour"}
        and modalities == {"0": "CT"}
    )
    meta["labels"] = {"background": 0, "liver": 1, "vessel": 2}  # nnU-Net v2: name -> value
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    assert read_msd(tmp_path)[1] == {1: "liver", 2: "vessel"}
    meta["training"] = [{"image": "./imagesTr/missing.nii.gz"}]
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"training\[0\] names .*missing.nii.gz, which does not exist"):
        read_msd(tmp_path)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = parse_config({"model": {"base": "sam-tiny", "image_size": 64}})
    return build_model(cfg, ["Anterior", "Posterior"])[0].eval()


def test_slice_wise_assembly_matches_per_slice_predictions(tiny_model) -> None:
    from medpeft.data.transforms import model_input, undo_resize
    from medpeft.models.prompts import Prompts

    volume = np.random.default_rng(1).integers(0, 255, (20, 24, 5)).astype(np.uint8)
    labels3d = segment_volume(tiny_model, volume, axis=2, batch_size=2, threshold=0.5)
    assert labels3d.shape == volume.shape
    for k in (0, 3):
        image = to_display(volume[:, :, k])
        tensor, meta = model_input(np.repeat(image[..., None], 3, -1), 64, "longest_pad", "sam")
        with torch.no_grad():
            prob = torch.sigmoid(tiny_model(tensor, Prompts(class_ids=torch.arange(2)[None])))[0]
        prob = undo_resize(prob, meta, "bilinear").numpy()
        masks = prob > 0.5
        expected = np.where(masks.any(0), np.argmax(np.where(masks, prob, -np.inf), 0) + 1, 0)
        assert np.array_equal(from_display(expected), labels3d[:, :, k])
    # a 3D box: classes predict only on the slices it crosses
    boxed = segment_volume(tiny_model, volume, 2, 8, {"Anterior": [2, 3, 1, 10, 12, 2]})
    assert not np.isin(boxed[:, :, [0, 3, 4]], [1]).any() and not (boxed == 2).any()


def test_box_projection_round_trips_to_the_voxel_range() -> None:
    shape = (20, 24, 5)
    box = box_on_slice([2, 3, 1, 10, 12, 2], 2, 1, shape)
    grid = np.zeros((24, 20), bool)  # display: rows = y, cols = x
    x1, y1, x2, y2 = box
    grid[y1:y2, x1:x2] = True
    back = from_display(grid)
    assert back.shape == (20, 24) and back[2:11, 3:13].all() and back.sum() == 9 * 10
    assert box_on_slice([2, 3, 1, 10, 12, 2], 2, 3, shape) is None


def test_case_scores_in_mm() -> None:
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    pred = np.roll(truth, 1, axis=0)
    s = case_scores(pred, truth, 1, (2.0, 1.0, 1.0))
    assert s["dice"][0] == pytest.approx(2 * 48 / 128) and s["hd95"][0] == pytest.approx(2.0)


@pytest.mark.shared
def test_msd_hippocampus_evaluate_and_predict_volumes(tmp_path: Path) -> None:
    from medpeft.data.volumes import export_slices
    from medpeft.engine.trainer import train

    root = shared_data("msd-hippocampus")
    cases, table, _ = read_msd(root)
    slices = tmp_path / "slices"
    for image, label in cases[:3]:
        export_slices(image, label, slices, table, axis=2, min_foreground_pixels=10)
    cfg = parse_config(
        {
            "model": {"base": "sam-tiny", "image_size": 64},
            "data": {"root": str(slices), "split": [1.0, 0.0, 0.0]},
            "prompts": {"train_modes": {"auto": 1.0}, "eval_mode": "auto"},
            "train": {"output_dir": str(tmp_path / "run"), "epochs": 1, "max_steps": 2, "batch_size": 4},
        }
    )
    train(cfg, progress=False)
    subset = tmp_path / "msd"
    (subset / "imagesTr").mkdir(parents=True)
    (subset / "labelsTr").mkdir()
    entries = []
    for image, label in cases[3:5]:
        (subset / "imagesTr" / image.name).symlink_to(image)
        (subset / "labelsTr" / label.name).symlink_to(label)
        entries.append({"image": f"./imagesTr/{image.name}", "label": f"./labelsTr/{label.name}"})
    meta = json.loads((root / "dataset.json").read_text())
    (subset / "dataset.json").write_text(json.dumps({**meta, "training": entries}))
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "run"),
            "--volumes",
            str(subset),
            "--out",
            str(tmp_path / "ev"),
            "--rotate",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["cases"] == 2 and set(summary["per_class"]) == {"Anterior", "Posterior"}
    assert 0.0 <= summary["mean"]["dice"] <= 1.0 and len(list((tmp_path / "ev" / "pictures").iterdir())) == 4
    rotation = summary["rotation"]
    assert (
        rotation["angles_rad"][2] == pytest.approx(0.7853982) and (tmp_path / "ev" / "rotation.png").is_file()
    )
    for r in rotation["per_class"].values():
        assert r["drop"] == pytest.approx(r["dice"] - r["dice_rotated"])
    assert "Dice original -> rotated (drop)" in result.output
    image = cases[3][0]
    result = runner.invoke(
        app, ["predict", str(tmp_path / "run"), str(image), "--out", str(tmp_path / "pred")]
    )
    assert result.exit_code == 0, result.output
    name = image.name.removesuffix(".gz").removesuffix(".nii")
    written, source = nib.load(str(tmp_path / "pred" / "volumes" / f"{name}.nii.gz")), nib.load(str(image))
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
    assert (tmp_path / "pred" / "pictures" / f"{name}.png").is_file()


def _write_dicom_series(folder: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series = generate_uid()
    for k in range(4):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = (
            meta,
            CTImageStorage,
            meta.MediaStorageSOPInstanceUID,
        )
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.PatientID = "CT", series, series, "p"
        ds.Rows, ds.Columns, ds.PixelSpacing, ds.SliceThickness = 6, 5, [0.7, 0.8], 2.5
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 2.5 * k], [1, 0, 0, 0, 1, 0]
        ds.InstanceNumber, ds.SamplesPerPixel, ds.PhotometricInterpretation = k + 1, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.full((6, 5), 1000 + k, np.int16).tobytes()
        ds.save_as(folder / f"s{k}.dcm", enforce_file_format=True)


def test_dicom_series_reads_with_spacing_and_rescale(tmp_path: Path) -> None:
    _write_dicom_series(tmp_path / "series")
    volume = read_volume(tmp_path / "series")
    assert volume.array.shape == (5, 6, 4) and volume.spacing == (0.8, 0.7, 2.5)  # columns x, rows y
    assert volume.array[0, 0].tolist() == [-24.0, -23.0, -22.0, -21.0]  # HU, ordered along z


def test_rotation_there_and_back_recovers_labels_but_the_boundary() -> None:
    import math

    from medpeft.engine.volumes import rotate_volume

    labels = np.zeros((40, 40, 20), np.uint8)
    labels[12:28, 10:30, 5:15] = 1
    labels[15:20, 15:20, 8:12] = 2
    turned = rotate_volume(labels, (0.0, 0.0, math.pi / 4), label=True)
    assert set(np.unique(turned)) == {0, 1, 2} and (turned != labels).mean() > 0.02
    back = rotate_volume(turned, (0.0, 0.0, -math.pi / 4), label=True)
    inside = labels > 0
    assert (back[inside] == labels[inside]).mean() > 0.98 and (back == labels).mean() > 0.99


def test_check_data_reports_each_planted_problem(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    (root / "labels.json").write_text(json.dumps({"1": "liver", "2": "spleen", "3": "kidney"}))
    image = np.zeros((6, 6, 4), np.float32)
    good = np.zeros((6, 6, 4), np.uint8)
    good[1:3, 1:3, 1:3] = 1
    good[3:5, 3:5, 1:3] = 2
    for name, label, affine in (
        ("ok", good, np.eye(4)),
        ("shape", good[:5], np.eye(4)),
        ("affine", good, np.diag([2.0, 1.0, 1.0, 1.0])),
        ("values", np.where(good == 2, 7, good).astype(np.uint8), np.eye(4)),
        ("empty", np.zeros_like(good), np.eye(4)),
    ):
        nib.save(
            nib.Nifti1Image(image, np.eye(4)),
            str(root / "images" / f"{name}.nii.gz"),
        )
        nib.save(nib.Nifti1Image(label, affine), str(root / "labels" / f"{name}.nii.gz"))
    (root / "images" / "unlabelled.nii.gz").write_bytes((root / "images" / "ok.nii.gz").read_bytes())
    result = CliRunner().invoke(app, ["check-data", str(root)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    expected = [
        "affine.nii.gz: affine differs",
        "empty.nii.gz: empty (no foreground voxel)",
        "shape.nii.gz: shape (5, 6, 4) differs from its image's (6, 6, 4)",
        "unlabelled.nii.gz: no label map",
        "values.nii.gz: label values [7] are not in the table [1, 2, 3]",
        "label 3 (kidney) appears in no label map",
    ]
    for text in expected:
        assert sum(text in line for line in lines) == 1, (text, lines)
    assert lines[-1] == "6 case(s) checked: 6 problem(s)"


@pytest.mark.shared
def test_shared_volume_layouts_read(tmp_path: Path) -> None:
    from medpeft.data.volume_io import check_volume_dataset, read_volume_dataset

    acdc = shared_data("acdc")
    cases, table = read_volume_dataset(acdc, "test")
    assert table == {1: "right_ventricle", 2: "myocardium", 3: "left_ventricle"} and 0 < len(cases) < 200
    assert all(label is not None and label.name == image.name for image, label in cases)
    n, problems = check_volume_dataset(shared_data("pyradiomics-mr"))
    assert n == 3 and problems == []
    brain = read_volume(shared_data("pyradiomics-mr") / "images" / "brain1.nii.gz")
    assert brain.spacing[2] == pytest.approx(6.5, abs=0.01)
    ct = read_volume(shared_data("totalseg-example") / "example_ct_sm.nii.gz")
    assert ct.array.ndim == 3 and to_uint8(ct.array, "abdomen").dtype == np.uint8
    brats = shared_data("brats2015-sample")
    table = tmp_path / "brats_labels.json"
    table.write_text(json.dumps({"1": "necrosis", "2": "edema", "3": "non_enhancing", "4": "enhancing"}))
    result = CliRunner().invoke(
        app,
        [
            "check-data",
            str(brats),
            "--image-glob",
            "*/*/Flair_subtrMeanDivStd.nii.gz",
            "--label-map",
            "{dir}/OTMultiClass.nii.gz",
            "--label-table",
            str(table),
        ],
    )
    assert result.exit_code == 0 and "6 case(s) checked: 0 problem(s)" in result.output, result.output
    flair = sorted(brats.glob("*/*/Flair_subtrMeanDivStd.nii.gz"))
    seg = read_volume(flair[0].parent / "OTMultiClass.nii.gz", label=True)
    assert read_volume(flair[0]).array.shape == seg.array.shape and set(np.unique(seg.array)) <= {
        0,
        1,
        2,
        3,
        4,
    }


def test_a_volume_dataset_source_splits_whole_subjects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medpeft.config import SourceConfig
    from medpeft.data.collection import read_collection

    monkeypatch.setenv("MEDPEFT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    (root / "labels.json").write_text(json.dumps({"1": "organ"}))
    rng = np.random.default_rng(0)
    for i in range(6):
        label = np.zeros((20, 20, 6), np.uint8)
        label[5:15, 5:15, 1:5] = 1
        nib.save(
            nib.Nifti1Image(rng.normal(size=(20, 20, 6)).astype(np.float32), np.eye(4)),
            str(root / "images" / f"s{i}.nii.gz"),
        )
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labels" / f"s{i}.nii.gz"))
    parts, labels = read_collection(
        [SourceConfig(dataset=root, min_foreground_pixels=10)], (0.5, 0.25, 0.25), 0
    )
    assert labels == ["organ"] and sum(len(v) for v in parts.values()) == 6 * 4  # 4 foreground slices each
    subjects = {k: {r.image.parent.parent for r in v} for k, v in parts.items()}
    assert (
        all(subjects.values())
        and not (subjects["train"] & subjects["val"])
        and not (subjects["train"] & subjects["test"])
    )


def test_volume_box_prompts_in_file_indices(tmp_path: Path, tiny_model) -> None:
    from medpeft.data.volume_io import read_volume_prompts

    affine = np.diag([-1.0, -1.0, 2.0, 1.0])  # L-P-S storage: x and y flip into RAS
    volume = np.random.default_rng(2).normal(size=(20, 24, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "v.nii.gz"))
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"v.nii.gz": {"boxes": {"Anterior": [2, 3, 1, 10, 12, 3]}}}))
    boxes = read_volume_prompts(prompts, [tmp_path / "v.nii.gz"], ["Anterior", "Posterior"])
    assert boxes[tmp_path / "v.nii.gz"]["boxes"]["Anterior"] == [
        [9, 11, 1, 17, 20, 3]
    ]  # 19 - 10, 23 - 12, ...
    for bad, message in (
        ({"w.nii.gz": {"boxes": {}}}, "'w.nii.gz' is not one of the input volumes"),
        ({"v.nii.gz": {"boxes": {"Liver": [0, 0, 0, 1, 1, 1]}}}, "Liver: unknown label"),
        (
            {"v.nii.gz": {"boxes": {"Anterior": [0, 0, 0, 1, 1, 6]}}},
            "inverted or leaves the volume (20, 24, 6)",
        ),
        ({"v.nii.gz": {"boxes": {"Anterior": [0, 0, 0]}}}, "expected 6 voxel indices"),
        ({"v.nii.gz": {"points": {"Anterior": [[1, 2, 3, 2]]}}}, "the point label must be 1 (positive) or 0"),
        ({"v.nii.gz": {"clicks": {}}}, 'expected {"boxes"'),
    ):
        prompts.write_text(json.dumps(bad))
        with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_volume_prompts(prompts, [tmp_path / "v.nii.gz"], ["Anterior", "Posterior"])

    from medpeft.engine.volumes import predict_volume_file

    prompts.write_text(json.dumps({"v.nii.gz": {"boxes": {"Anterior": [2, 3, 1, 10, 12, 3]}}}))
    boxes = read_volume_prompts(prompts, [tmp_path / "v.nii.gz"], ["Anterior", "Posterior"])
    entry = predict_volume_file(
        tiny_model, tmp_path / "v.nii.gz", tmp_path / "out", prompts=boxes[tmp_path / "v.nii.gz"]
    )
    assert entry["prompt_mode"] == "boxes"
    written = np.asarray(nib.load(str(tmp_path / "out" / "volumes" / "v.nii.gz")).dataobj)
    assert written.shape == volume.shape and not written[:, :, [0, 4, 5]].any() and not (written == 2).any()


def test_per_slice_boxes_and_points_reach_their_slices(tiny_model) -> None:
    from medpeft.engine.volumes import slice_prompts

    shape = (20, 24, 5)
    boxes = {"Anterior": [[2, 3, 1, 10, 12, 1], [4, 5, 3, 8, 9, 3]]}  # one box per slice
    points = {"Posterior": [[6, 7, 2], [8, 9, 2, 0]]}
    assert slice_prompts(boxes, points, 2, 1, shape) == {"boxes": {"Anterior": [9, 11, 18, 21]}}
    assert slice_prompts(boxes, points, 2, 2, shape) == {"points": {"Posterior": [[13, 16, 1], [11, 14, 0]]}}
    assert slice_prompts(boxes, points, 2, 3, shape) == {"boxes": {"Anterior": [11, 14, 16, 19]}}
    volume = np.random.default_rng(3).integers(0, 255, shape).astype(np.uint8)
    out = segment_volume(tiny_model, volume, 2, 8, boxes, points=points)
    assert (
        not out[:, :, [0, 4]].any() and not (out[:, :, [1, 3]] == 2).any() and not (out[:, :, 2] == 1).any()
    )
