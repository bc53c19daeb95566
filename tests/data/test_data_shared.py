"""The readers on the real datasets in ../shared/data, read as they are (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medpeft.data import SegmentationDataset, export_slices, load_masks, read_dataset

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(
        not SHARED.is_dir(), reason=f"shared data not found at {SHARED} (clone the repo beside shared/)"
    ),
]


def check_item(records: list, labels: list[str], index: int = 0, size: int = 256) -> dict:
    ds = SegmentationDataset(records, labels, image_size=size, n_pos_points=1, n_neg_points=1)
    item = ds[index]
    c = len(labels)
    assert item["image"].shape == (3, size, size)
    assert item["masks"].shape == (c, size, size)
    assert item["boxes"].shape == (c, 4) and item["points"].shape == (c, 2, 2)
    assert item["box_valid"].shape == (c,) and item["point_labels"].shape == (c, 2)
    assert bool(item["box_valid"].any())
    return item


def test_kvasir_seg() -> None:
    records, labels = read_dataset(SHARED / "kvasir-seg")
    assert len(records) == 998 and labels == ["foreground"]
    masks = load_masks(records[0], labels)
    assert masks.shape == (1, 256, 256) and 0 < masks.mean() < 1
    item = check_item(records, labels)
    assert item["masks"].sum() > 0 and bool(item["box_valid"][0])


def test_sammed2d_demo() -> None:
    # 5 images; amos_0507_31.png is in neither json and has no mask, so 4 annotated images are read.
    records, labels = read_dataset(SHARED / "sam-med2d-demo")
    assert len(records) == 4 and {"liver", "aorta", "spleen"} <= set(labels)
    item = check_item(records, labels, index=1)
    assert bool(item["box_valid"][labels.index("liver")])
    sizes = {tuple(load_masks(r, labels).shape[1:]) for r in records}
    assert (155, 225) in sizes and (512, 512) in sizes


def test_totalseg_export(tmp_path: Path) -> None:
    src = SHARED / "totalseg-example"
    written = export_slices(
        src / "example_ct_sm.nii.gz",
        src / "example_seg.nii.gz",
        tmp_path,
        {5: "liver", 1: "spleen"},
        window=(40, 400),
    )
    records, labels = read_dataset(tmp_path)
    assert len(records) == len(written) >= 20 and labels == ["spleen", "liver"]
    check_item(records, labels, index=len(records) // 2, size=128)


def test_brats_export(tmp_path: Path) -> None:
    subject = SHARED / "brats2015-sample" / "train" / "brats_2013_pat0005_1"
    labels = {1: "necrosis", 2: "edema", 3: "non_enhancing", 4: "enhancing"}
    written = export_slices(
        subject / "Flair_subtrMeanDivStd.nii.gz",
        subject / "OTMultiClass.nii.gz",
        tmp_path,
        labels,
        step=4,
        min_foreground_pixels=500,
    )
    records, names = read_dataset(tmp_path)
    assert len(records) == len(written) > 3 and names == list(labels.values())
    item = check_item(records, names, index=len(records) // 2)
    assert np.isfinite(item["image"].numpy()).all()
