"""Tests of the 2D data layer on tiny synthetic datasets (and the bundled demo data)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medpeft.data import (
    AugmentConfig,
    DataError,
    SegmentationDataset,
    augment,
    center_point,
    collate,
    export_slices,
    jitter_box,
    load_image,
    load_masks,
    load_split_file,
    load_volume,
    mask_to_box,
    normalize,
    read_dataset,
    read_folder_dataset,
    read_sammed2d_json,
    resize_longest_pad,
    resize_plain,
    sample_points,
    split_records,
    tight_box,
    undo_resize,
    window,
)
from medpeft.data.transforms import rot90, rotate

REPO = Path(__file__).resolve().parents[2]
H, W = 40, 60


def rect_mask(top: int, left: int, bottom: int, right: int, hw: tuple[int, int] = (H, W)) -> np.ndarray:
    m = np.zeros(hw, bool)
    m[top:bottom, left:right] = True
    return m


def make_image(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (*mask.shape, 3), dtype=np.uint8)
    img[mask] = 220
    return img


def make_folder(
    root: Path, n: int = 4, mask_ext: str = ".png", label_map: bool = False, labels_json: object = None
) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        a = rect_mask(5 + i, 10, 25 + i, 30)
        b = rect_mask(8, 40, 30, 55)
        Image.fromarray(make_image(a | b, i)).save(root / "images" / f"case{i}.png")
        mask = (a.astype(np.uint8) + 2 * b.astype(np.uint8)) if label_map else a.astype(np.uint8) * 255
        Image.fromarray(mask).save(root / "masks" / f"case{i}{mask_ext}", quality=90)
    if labels_json is not None:
        (root / "labels.json").write_text(json.dumps(labels_json))
    return root


# ----------------------------------------------------------------------------- readers


def test_binary_png_folder(tmp_path: Path) -> None:
    records, labels = read_dataset(make_folder(tmp_path / "ds"))
    assert labels == ["foreground"] and len(records) == 4
    masks = load_masks(records[1], labels)
    assert masks.shape == (1, H, W) and masks.dtype == bool
    assert np.array_equal(masks[0], rect_mask(6, 10, 26, 30))
    assert read_folder_dataset(tmp_path / "ds", labels=["polyp"])[1] == ["polyp"]


def test_single_label_json_names_binary_masks(tmp_path: Path) -> None:
    records, labels = read_dataset(make_folder(tmp_path / "ds", labels_json={"1": "polyp"}))
    assert labels == ["polyp"]
    assert load_masks(records[0], labels)[0].sum() == 20 * 20


def test_jpeg_masks_are_thresholded(tmp_path: Path) -> None:
    records, labels = read_dataset(make_folder(tmp_path / "ds", mask_ext=".JPG"))
    m = load_masks(records[0], labels)[0]
    truth = rect_mask(5, 10, 25, 30)
    assert (m & truth).sum() / (m | truth).sum() > 0.95


@pytest.mark.parametrize("table", [{"1": "liver", "2": "spleen"}, {"labels": {"1": "liver", "2": "spleen"}}])
def test_label_map_folder(tmp_path: Path, table: dict) -> None:
    records, labels = read_dataset(make_folder(tmp_path / "ds", label_map=True, labels_json=table))
    assert labels == ["liver", "spleen"]
    masks = load_masks(records[0], labels)
    assert masks.shape == (2, H, W)
    assert np.array_equal(masks[0], rect_mask(5, 10, 25, 30)) and np.array_equal(
        masks[1], rect_mask(8, 40, 30, 55)
    )
    sub, names = read_folder_dataset(tmp_path / "ds", labels=["spleen"])
    assert names == ["spleen"] and np.array_equal(load_masks(sub[0], names)[0], masks[1])
    # a label that is not in this record's table gives an all-False channel
    assert not load_masks(sub[0], ["spleen", "kidney"])[1].any()


def test_load_image_modes(tmp_path: Path) -> None:
    gray16 = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 7 + 1000).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    img = load_image(tmp_path / "g16.png")
    assert img.shape == (H, W, 3) and img.dtype == np.uint8 and img.min() == 0 and img.max() == 255
    Image.fromarray(np.full((H, W), 77, np.uint8)).save(tmp_path / "g8.png")
    assert np.all(load_image(tmp_path / "g8.png") == 77)
    Image.fromarray(np.full((H, W, 4), 9, np.uint8)).save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "rgba.png").shape == (H, W, 3)


def make_sammed2d(root: Path) -> Path:
    """SAM-Med2D layout: json paths start with the release folder name ``data_demo``."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    train, test = {}, {}
    for i, split in enumerate(["train", "train", "test"]):
        stem = f"ct_{i}"
        Image.fromarray(make_image(rect_mask(5, 5, 20, 20), i)).save(root / "images" / f"{stem}.png")
        masks = {
            f"{stem}_liver_000.png": rect_mask(5, 5, 20, 20),
            f"{stem}_hip_left_000.png": rect_mask(25, 5, 30, 10),
            f"{stem}_hip_left_001.png": rect_mask(25, 40, 30, 50),
        }
        if i == 0:
            masks[f"{stem}_aorta_000.png"] = rect_mask(30, 30, 35, 35)
        for name, m in masks.items():
            Image.fromarray(m.astype(np.uint8) * 255).save(root / "masks" / name)
        img_rel = f"data_demo/images/{stem}.png"
        if split == "train":
            train[img_rel] = [f"data_demo/masks/{m}" for m in masks]
        else:
            test.update({f"data_demo/masks/{m}": img_rel for m in masks})
    (root / "image2label_train.json").write_text(json.dumps(train))
    (root / "label2image_test.json").write_text(json.dumps(test))
    return root


def test_sammed2d_layout(tmp_path: Path) -> None:
    root = make_sammed2d(tmp_path / "my_copy")
    records, labels = read_dataset(root)
    assert len(records) == 3 and labels == ["aorta", "hip_left", "liver"]
    masks = load_masks(records[0], labels)
    assert masks.shape == (3, H, W) and masks[0].any()
    assert np.array_equal(masks[1], rect_mask(25, 5, 30, 10) | rect_mask(25, 40, 30, 50))  # instances merged
    assert not load_masks(records[1], labels)[0].any()  # no aorta in that image
    recs_train, _ = read_sammed2d_json(root / "image2label_train.json")
    recs_test, _ = read_sammed2d_json(root / "label2image_test.json", root=root)
    assert len(recs_train) == 2 and len(recs_test) == 1
    assert read_dataset(root, labels=["liver"])[1] == ["liver"]


# ----------------------------------------------------------------------------- errors


def expect_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert match in msg and "\n" not in msg, msg
    return msg


def test_error_corrupt_image(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds")
    (root / "images" / "case0.png").write_bytes(b"not a png")
    expect_error("case0.png", read_dataset, root)
    expect_error("case0.png", load_image, root / "images" / "case0.png")


def test_error_mask_size(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "masks" / "case2.png")
    msg = expect_error("masks/case2.png", read_dataset, root)
    assert "images/case2.png" in msg and "12x10" in msg and f"{W}x{H}" in msg
    records, labels = read_dataset(root, check_sizes=False)
    expect_error("case2.png", load_masks, records[2], labels)


def test_error_unpaired_files(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds")
    (root / "masks" / "case1.png").unlink()
    msg = expect_error("images/case1.png", read_dataset, root)
    assert str(root / "masks") in msg
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "masks" / "orphan.png")
    (root / "masks" / "case1.png").write_bytes((root / "masks" / "case0.png").read_bytes())
    msg = expect_error("orphan.png", read_dataset, root)
    assert str(root / "images") in msg


def test_error_unknown_label(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", label_map=True, labels_json={"1": "liver", "2": "spleen"})
    msg = expect_error("'kidney'", read_dataset, root, labels=["kidney"])
    assert "liver" in msg and "spleen" in msg
    expect_error("'kidney'", read_dataset, make_sammed2d(tmp_path / "s"), labels=["kidney"])


def test_error_empty_and_missing_folders(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    expect_error(str(root / "masks"), read_dataset, root)
    (root / "masks").mkdir()
    (root / "images" / "notes.txt").write_text("x")
    msg = expect_error(str(root / "images"), read_dataset, root)
    assert "empty" in msg and ".png" in msg
    expect_error("not found", read_dataset, tmp_path / "nowhere")


def test_error_sammed2d_missing_file(tmp_path: Path) -> None:
    root = make_sammed2d(tmp_path / "s")
    (root / "masks" / "ct_0_liver_000.png").unlink()
    expect_error("ct_0_liver_000.png", read_dataset, root)


# ----------------------------------------------------------------------------- transforms


def test_resize_round_trip_integer_scale() -> None:
    mask = rect_mask(3, 7, 21, 44)[None]
    img = make_image(mask[0])
    r_img, r_masks, meta = resize_longest_pad(img, mask, 120)
    assert r_img.shape == (120, 120, 3) and r_masks.shape == (1, 120, 120)
    assert meta.original_size == (H, W) and meta.resized_size == (80, 120)
    assert not r_masks[:, 80:].any() and np.all(r_img[80:] == 0)
    assert np.array_equal(undo_resize(r_masks, meta, "nearest"), mask)
    logits = torch.from_numpy(r_masks.astype(np.float32) * 2 - 1)
    back = undo_resize(logits, meta, "bilinear")
    assert isinstance(back, torch.Tensor) and back.shape == (1, H, W)
    assert torch.equal(back > 0, torch.from_numpy(mask))


def test_resize_plain_and_non_integer_scale() -> None:
    mask = rect_mask(3, 7, 21, 44)[None]
    img = make_image(mask[0])
    p_img, p_masks, meta = resize_plain(img, mask, 64)
    assert p_img.shape == (64, 64, 3) and p_masks.shape == (1, 64, 64) and meta.resized_size == (64, 64)
    assert undo_resize(p_masks, meta, "nearest").shape == (1, H, W)
    _, l_masks, meta = resize_longest_pad(img, mask, 50)
    back = undo_resize(l_masks, meta, "nearest")
    assert back.shape == (1, H, W) and (back & mask).sum() / (back | mask).sum() > 0.9


def test_normalize_modes() -> None:
    img = make_image(rect_mask(5, 5, 20, 20))
    sam = normalize(img, "sam")
    assert sam.dtype == np.float32 and abs(sam[0, 0, 0] - (img[0, 0, 0] - 123.675) / 58.395) < 1e-5
    mm = normalize(img, "minmax")
    assert mm.min() == 0 and mm.max() == 1
    z = normalize(img, "zscore")
    assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-3
    with pytest.raises(ValueError):
        normalize(img, "bogus")


def test_augmentation_keeps_alignment() -> None:
    mask = rect_mask(3, 7, 21, 30) | rect_mask(25, 40, 38, 58)
    img = np.where(mask[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)
    cfg = {"hflip_p": 0.5, "vflip_p": 0.5, "rot90_p": 0.7}
    for seed in range(8):
        a_img, a_masks = augment(img, mask[None], np.random.default_rng(seed), cfg)
        assert np.array_equal(a_img[..., 0] > 127, a_masks[0])
    r_img, r_masks = rotate(img, mask[None], 12.0)
    bright = r_img[..., 0] > 127
    assert (bright & r_masks[0]).sum() / (bright | r_masks[0]).sum() > 0.9
    assert rot90(img, mask[None], 1)[0].shape == (W, H, 3)
    j_img, j_masks = augment(
        img,
        mask[None],
        np.random.default_rng(0),
        {"hflip_p": 0, "brightness_p": 1, "gamma_p": 1, "contrast_p": 1},
    )
    assert np.array_equal(j_masks[0], mask) and j_img.dtype == np.uint8
    short = AugmentConfig.from_dict({"hflip": 0.3, "intensity": 0.2, "gamma_p": 0.9})
    assert (short.hflip_p, short.brightness_p, short.contrast_p, short.gamma_p) == (0.3, 0.2, 0.2, 0.9)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment(img, mask[None], np.random.default_rng(0), {"flip": 1})


# ----------------------------------------------------------------------------- prompts


def test_box_and_center_point() -> None:
    mask = rect_mask(5, 10, 25, 30)
    assert mask_to_box(mask).tolist() == [10, 5, 29, 24]
    box, valid = tight_box(np.zeros((H, W), bool))
    assert not valid and not box.any()
    ring = rect_mask(0, 0, 30, 30) & ~rect_mask(0, 10, 20, 30)  # L shape: centroid is outside
    x, y = center_point(ring).astype(int)
    assert ring[y, x]
    cx, cy = center_point(rect_mask(10, 10, 21, 31))
    assert (cx, cy) == (20, 15)


def test_jitter_box_bounds_and_reproducible() -> None:
    box = np.array([2, 3, 50, 35], np.float32)
    boxes = [jitter_box(box, np.random.default_rng(s), 0.2, 20, image_size=(H, W)) for s in range(50)]
    for b in boxes:
        assert 0 <= b[0] <= b[2] <= W - 1 and 0 <= b[1] <= b[3] <= H - 1
        assert np.all(np.abs(b - box) <= np.array([9.6, 6.4, 9.6, 6.4]) + 0.5)
    assert len({tuple(b) for b in boxes}) > 10
    again = jitter_box(box, np.random.default_rng(7), 0.2, 20, image_size=(H, W))
    assert np.array_equal(again, boxes[7])


def test_sample_points() -> None:
    mask = rect_mask(5, 10, 25, 30)
    pts, labels = sample_points(mask, np.random.default_rng(0), n_pos=5, n_neg=3)
    assert pts.shape == (8, 2) and labels.tolist() == [1] * 5 + [0] * 3
    xs, ys = pts[:, 0].astype(int), pts[:, 1].astype(int)
    assert mask[ys[:5], xs[:5]].all() and not mask[ys[5:], xs[5:]].any()
    pts, labels = sample_points(np.zeros((H, W), bool), np.random.default_rng(0), 2, 1)
    assert labels.tolist() == [-1, -1, -1]


# ----------------------------------------------------------------------------- splits


def test_split_records(tmp_path: Path) -> None:
    items = [f"/d/img{i:02d}.png" for i in range(20)]
    a = split_records(items, seed=1)
    b = split_records(list(reversed(items)), seed=1)
    assert a == b and {k: len(v) for k, v in a.items()} == {"train": 14, "val": 3, "test": 3}
    assert sorted(sum(a.values(), [])) == sorted(items)
    assert split_records(items, seed=2) != a
    small = split_records(items[:3])
    assert all(len(v) == 1 for v in small.values())
    with pytest.raises(DataError, match="cannot split 2"):
        split_records(items[:2])
    assert split_records(items[:2], (1.0, 0.0, 0.0))["val"] == []
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": ["img00", "img01"], "val": ["img02.png"], "test": []}))
    from_file = load_split_file(split_file, items)
    assert from_file["train"] == items[:2] and from_file["val"] == [items[2]]
    assert split_records(items, split_file=split_file) == from_file
    split_file.write_text(json.dumps({"train": ["nope"]}))
    expect_error("nope", load_split_file, split_file, items)


# ----------------------------------------------------------------------------- dataset


def test_dataset_items(tmp_path: Path) -> None:
    root = make_folder(
        tmp_path / "ds", label_map=True, labels_json={"1": "liver", "2": "spleen", "3": "kidney"}
    )
    records, labels = read_dataset(root)
    ds = SegmentationDataset(records, labels, image_size=64, augment={"hflip_p": 0.5}, n_neg_points=2, seed=3)
    item = ds[1]
    expect = {
        "image": ((3, 64, 64), torch.float32),
        "masks": ((3, 64, 64), torch.float32),
        "boxes": ((3, 4), torch.float32),
        "box_valid": ((3,), torch.bool),
        "points": ((3, 3, 2), torch.float32),
        "point_labels": ((3, 3), torch.int64),
        "class_ids": ((3,), torch.int64),
    }
    for key, (shape, dtype) in expect.items():
        assert tuple(item[key].shape) == shape and item[key].dtype == dtype, key
    assert item["index"] == 1 and item["class_ids"].tolist() == [0, 1, 2]
    assert item["box_valid"].tolist() == [True, True, False]  # no kidney in the masks
    assert item["point_labels"][2].tolist() == [-1, -1, -1] and item["point_labels"][0].tolist() == [1, 0, 0]
    assert set(item["masks"].unique().tolist()) <= {0.0, 1.0}
    assert torch.all(item["image"][:, 43:] == 0)  # 40x60 -> 43x64, padding stays 0 after normalisation
    assert torch.equal(ds[1]["boxes"], item["boxes"])  # same (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["points"], item["points"])
    meta = ds.get_meta(1)
    assert (
        meta.path == records[1].image
        and meta.geometry.original_size == (H, W)
        and meta.geometry.resized_size == (43, 64)
    )
    batch = collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 64, 64) and batch["index"].tolist() == [0, 1]


def test_dataset_eval_prompts_deterministic(tmp_path: Path) -> None:
    records, labels = read_dataset(make_folder(tmp_path / "ds"))
    ds = SegmentationDataset(
        records, labels, image_size=60, resize="resize", prompt_sampling="eval", cache=False
    )
    item = ds[0]
    ds.set_epoch(5)
    assert torch.equal(ds[0]["points"], item["points"]) and torch.equal(ds[0]["boxes"], item["boxes"])
    x, y = item["points"][0, 0].long().tolist()
    assert item["masks"][0, y, x] == 1
    box = item["boxes"][0].tolist()
    assert box == mask_to_box(item["masks"][0].numpy() > 0).tolist()
    with pytest.raises(ValueError, match="prompt_sampling"):
        SegmentationDataset(records, labels, prompt_sampling="bogus")


# ----------------------------------------------------------------------------- volumes and demo data


def test_export_slices_from_nifti(tmp_path: Path) -> None:
    vol = np.full((30, 20, 6), -1000, np.int16)
    seg = np.zeros(vol.shape, np.uint8)
    vol[5:15, 5:12, 1:5] = 50
    seg[5:15, 5:12, 1:5] = 1
    seg[20:25, 2:6, 2:4] = 7  # dropped: not in labels
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(seg, affine), tmp_path / "seg.nii.gz")
    data, spacing = load_volume(tmp_path / "ct.nii.gz")
    assert data.shape == (30, 20, 6) and np.allclose(spacing, (0.8, 0.9, 2.5))
    written = export_slices(
        tmp_path / "ct.nii.gz",
        tmp_path / "seg.nii.gz",
        tmp_path / "out",
        {1: "liver"},
        min_foreground_pixels=10,
        window=(40, 400),
    )
    assert [p.name for p in written] == [f"ct_z00{k}.png" for k in range(1, 5)]
    records, labels = read_dataset(tmp_path / "out")
    assert labels == ["liver"] and records[0].spacing == (0.9, 0.8)
    masks = load_masks(records[0], labels)
    assert masks.shape == (1, 20, 30) and masks.sum() == 70
    assert window(np.array([-160, 40, 240]), 40, 400).tolist() == [0, 128, 255]


def test_demo_data_readable() -> None:
    root = REPO / "demo_data" / "totalseg_ct"
    records, labels = read_dataset(root)
    assert sorted(labels) == ["kidney_left", "kidney_right", "liver", "spleen", "stomach"]
    assert len(records) > 10 and all(r.spacing is not None for r in records)
    masks = load_masks(records[len(records) // 2], labels)
    assert masks[labels.index("liver")].sum() > 100
    assert (REPO / "demo_data" / "LICENSE-NOTICE.md").is_file()
    size = sum(p.stat().st_size for p in (REPO / "demo_data").rglob("*") if p.is_file())
    assert size < 1_000_000
