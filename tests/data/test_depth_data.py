"""Depth-map I/O, images/ + depth/ folder pairing and DepthDataset items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from depth_fixtures import DEPTH_SCALE, make_depth_dataset
from medpeft.data.depth import (
    DepthDataset,
    DepthRecord,
    read_depth,
    read_depth_folder,
    write_depth_picture,
    write_depth_png16,
)
from medpeft.data.io import DataError

# ----------------------------------------------------------------------------- files


def test_png16_round_trip_with_scale(tmp_path: Path) -> None:
    depth = np.array([[0.5, 1.2344, 0.0], [np.nan, -1.0, 65.535]], np.float32)
    write_depth_png16(tmp_path / "d.png", depth, scale=0.001)
    raw = np.asarray(Image.open(tmp_path / "d.png"))
    assert raw.dtype == np.uint16
    assert raw.tolist() == [[500, 1234, 0], [0, 0, 65535]]
    back = read_depth(tmp_path / "d.png", scale=0.001)
    assert back.dtype == np.float32 and back.shape == (2, 3)
    np.testing.assert_allclose(back, [[0.5, 1.234, 0.0], [0.0, 0.0, 65.535]], rtol=1e-6)


def test_png16_clips_far_and_keeps_tiny_depths_valid(tmp_path: Path) -> None:
    write_depth_png16(tmp_path / "d.png", np.array([[1e-7, 1e9]]), scale=0.001)
    assert np.asarray(Image.open(tmp_path / "d.png")).tolist() == [[1, 65535]]


def test_png16_accepts_a_batch_of_one_tensor(tmp_path: Path) -> None:
    write_depth_png16(tmp_path / "t.png", torch.tensor([[[[0.25, 0.0, 2.0]]]]), scale=0.25)
    assert np.asarray(Image.open(tmp_path / "t.png")).tolist() == [[1, 0, 8]]
    with pytest.raises(ValueError, match=r"t2\.png has shape \(2, 1, 3\)"):
        write_depth_png16(tmp_path / "t2.png", np.ones((2, 1, 3)), scale=1.0)


def test_npy_float_int_and_squeezed(tmp_path: Path) -> None:
    arr = np.array([[1.5, np.nan, np.inf], [-np.inf, -2.0, 0.0]], np.float64)
    np.save(tmp_path / "f.npy", arr)
    np.testing.assert_array_equal(read_depth(tmp_path / "f.npy", 2.0), [[3.0, 0, 0], [0, 0, 0]])
    np.save(tmp_path / "i.npy", np.array([[1000, 0, -5]], np.int32)[:, :, None])
    out = read_depth(tmp_path / "i.npy", 0.001)
    assert out.shape == (1, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, [[1.0, 0.0, 0.0]])


def test_tiff_float_and_uint16(tmp_path: Path) -> None:
    Image.fromarray(np.array([[2.5, np.nan], [-1.0, 0.25]], np.float32)).save(tmp_path / "f.tif")
    np.testing.assert_allclose(read_depth(tmp_path / "f.tif", 10.0), [[25.0, 0.0], [0.0, 2.5]])
    Image.fromarray(np.array([[0, 1500], [65535, 7]], np.uint16)).save(tmp_path / "u.tiff")
    np.testing.assert_allclose(
        read_depth(tmp_path / "u.tiff", 0.001), [[0.0, 1.5], [65.535, 0.007]], rtol=1e-6
    )


def test_read_depth_errors_name_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match=r"bad\.npy.*\(4, 4, 2\).*expected a 2-D"):
        read_depth(tmp_path / "bad.npy")
    with pytest.raises(ValueError, match=r"d\.jpg.*unsupported suffix"):
        read_depth(tmp_path / "d.jpg")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png.*mode 'RGB'.*single-channel"):
        read_depth(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"not found: .*missing\.png"):
        read_depth(tmp_path / "missing.png")
    with pytest.raises(DataError):  # the CLI's one-line user error
        read_depth(tmp_path / "bad.npy")
    with pytest.raises(ValueError, match=r"scale must be"):
        read_depth(tmp_path / "bad.npy", scale=0.0)


def test_depth_picture_is_rgb_with_black_invalid(tmp_path: Path) -> None:
    depth = np.array([[1.0, 2.0], [3.0, 0.0]], np.float32)
    write_depth_picture(tmp_path / "sub" / "p.png", depth)
    pic = np.asarray(Image.open(tmp_path / "sub" / "p.png"))
    assert pic.shape == (2, 2, 3) and pic.dtype == np.uint8
    assert pic[1, 1].tolist() == [0, 0, 0]
    assert pic[0, 0, 0] > pic[0, 0, 2] and pic[1, 0, 2] > pic[1, 0, 0]  # near warm, far cool


# ----------------------------------------------------------------------------- folders


def test_read_depth_folder_pairs_sorted(tmp_path: Path) -> None:
    root = make_depth_dataset(tmp_path / "ds", n=3, size=16)
    recs = read_depth_folder(root)
    assert [r.name for r in recs] == ["scene000", "scene001", "scene002"]
    assert recs[1] == DepthRecord(
        root / "images" / "scene001.png", root / "depth" / "scene001.png", "scene001"
    )
    (root / "images" / "notes.txt").write_text("ignored")
    assert read_depth_folder(root) == recs


def test_unmatched_stems_listed(tmp_path: Path) -> None:
    root = make_depth_dataset(tmp_path / "ds", n=2, size=16)
    img = Image.open(root / "images" / "scene000.png")
    for k in range(7):
        img.save(root / "images" / f"extra{k}.png")
    np.save(root / "depth" / "orphan.npy", np.ones((16, 16)))
    with pytest.raises(ValueError) as info:
        read_depth_folder(root)
    msg = str(info.value)
    assert "\n" not in msg
    assert (
        "7 images without a depth map" in msg and "extra0, extra1, extra2, extra3, extra4 and 2 more" in msg
    )
    assert "extra5" not in msg
    assert "1 depth maps without an image" in msg and "orphan" in msg


def test_missing_subfolder_and_empty_folder(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "images" / "a.png")
    with pytest.raises(ValueError, match=rf"missing folder {root / 'depth'}.*expected root/images"):
        read_depth_folder(root)
    (root / "depth").mkdir()
    with pytest.raises(ValueError, match=rf"no .* files in {root / 'depth'}.*expected root/images"):
        read_depth_folder(root)
    with pytest.raises(ValueError, match=r"not found: .*nowhere"):
        read_depth_folder(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- dataset


def _pair(root: Path, image: np.ndarray, depth: np.ndarray, name: str = "x") -> DepthRecord:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "depth").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{name}.png")
    np.save(root / "depth" / f"{name}.npy", depth)
    return DepthRecord(root / "images" / f"{name}.png", root / "depth" / f"{name}.npy", name)


def test_dataset_item_shapes_dtypes(tmp_path: Path) -> None:
    root = make_depth_dataset(tmp_path / "ds", n=4, size=40)
    ds = DepthDataset(read_depth_folder(root), image_size=28, scale=DEPTH_SCALE)
    item = ds[2]
    assert item["image"].shape == (3, 28, 28) and item["image"].dtype == torch.float32
    assert item["depth"].shape == (1, 28, 28) and item["depth"].dtype == torch.float32
    assert item["valid"].shape == (1, 28, 28) and item["valid"].dtype == torch.bool
    assert item["name"] == "scene002"
    assert torch.equal(item["valid"], item["depth"] > 0)
    assert 0.3 < float(item["depth"][item["valid"]].min()) and float(item["depth"].max()) < 4.0
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["depth"].shape == (2, 1, 28, 28) and batch["name"] == ["scene000", "scene001"]


def test_dataset_normalisation_numbers(tmp_path: Path) -> None:
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[...] = (255, 0, 51)
    rec = _pair(tmp_path, rgb, np.full((6, 6), 2.0))
    x = DepthDataset([rec], image_size=6)[0]["image"]
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225]
    torch.testing.assert_close(x.mean((1, 2)), torch.tensor(expected), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std((1, 2)), torch.zeros(3), atol=1e-6, rtol=0)
    custom = DepthDataset([rec], image_size=6, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))[0]["image"]
    torch.testing.assert_close(custom[:, 0, 0], torch.tensor([1.0, -1.0, -0.6]), atol=1e-5, rtol=0)
    gray = _pair(tmp_path / "g", np.full((6, 6), 255, np.uint8), np.ones((6, 6)))
    g = DepthDataset([gray], image_size=6, mean=(0, 0, 0), std=(1, 1, 1))[0]["image"]
    torch.testing.assert_close(g, torch.ones(3, 6, 6))


@pytest.mark.parametrize("size", [7, 16, 45])
def test_nearest_resize_keeps_only_original_depths(tmp_path: Path, size: int) -> None:
    rng = np.random.default_rng(0)
    depth = rng.choice([0.0, 1.0, 1.5, 7.25, 30.0], size=(20, 30))
    rec = _pair(tmp_path, rng.integers(0, 255, (20, 30, 3), dtype=np.uint8), depth)
    item = DepthDataset([rec], image_size=size)[0]
    values = set(np.unique(item["depth"].numpy()).tolist())
    assert values <= {0.0, 1.0, 1.5, 7.25, 30.0}
    assert torch.equal(item["valid"], item["depth"] > 0)


def test_longest_pad_marks_padding_invalid(tmp_path: Path) -> None:
    rec = _pair(tmp_path, np.full((10, 20, 3), 200, np.uint8), np.full((10, 20), 3.0))
    ds = DepthDataset([rec], image_size=20, resize="longest_pad")
    item = ds[0]
    assert bool(item["valid"][0, :10].all()) and not bool(item["valid"][0, 10:].any())
    assert float(item["image"][:, 10:].abs().max()) == 0.0
    assert ds.get_meta(0).resized_size == (10, 20)


def test_image_depth_size_mismatch_names_both(tmp_path: Path) -> None:
    rec = _pair(tmp_path, np.zeros((8, 8, 3), np.uint8), np.ones((8, 9)))
    with pytest.raises(ValueError, match=r"x\.npy is 8x9 but image .*x\.png is 8x8"):
        DepthDataset([rec], image_size=8)[0]


def _flips(ds: DepthDataset, plain: DepthDataset) -> list[bool]:
    """Which items of ``ds`` are the left-right mirror of the un-augmented item (others are identical)."""
    out = []
    for i in range(len(ds)):
        a, p = ds[i], plain[i]
        flipped = torch.equal(a["depth"], p["depth"].flip(-1))
        assert flipped or torch.equal(a["depth"], p["depth"])
        for key in ("image", "depth", "valid"):
            assert torch.equal(a[key], p[key].flip(-1) if flipped else p[key])
        out.append(flipped)
    return out


def test_flip_reproducible_and_changes_with_epoch(tmp_path: Path) -> None:
    recs = read_depth_folder(make_depth_dataset(tmp_path / "ds", n=8, size=24))
    plain = DepthDataset(recs, 24, scale=DEPTH_SCALE)
    a = DepthDataset(recs, 24, scale=DEPTH_SCALE, hflip_p=0.5, seed=5)
    b = DepthDataset(recs, 24, scale=DEPTH_SCALE, hflip_p=0.5, seed=5)
    patterns = []
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        fa = _flips(a, plain)
        assert fa == _flips(b, plain)
        patterns.append(fa)
    assert any(any(p) for p in patterns) and not all(all(p) for p in patterns)
    assert patterns[0] != patterns[1] or patterns[1] != patterns[2]
    assert _flips(plain, plain) == [False] * 8


def test_segmentation_items_carry_depth_augmented_with_the_masks(tmp_path: Path) -> None:
    from medpeft.data.dataset import SegmentationDataset
    from medpeft.data.readers import read_dataset
    from medpeft.data.synthetic import make_depth_matters_dataset

    root = make_depth_matters_dataset(tmp_path / "dm", n=3, size=64)
    records, labels = read_dataset(root)
    assert all(r.depth is not None for r in records)
    augment = {"hflip_p": 1.0, "rot90_p": 1.0, "rotate_p": 1.0, "rotate_max_deg": 30.0}
    for aug in (None, augment):
        ds = SegmentationDataset(records, labels, 64, resize="resize", augment=aug, depth_scale=0.001)
        item = ds[1]
        depth, mask = item["depth"], item["masks"][0] > 0.5
        valid = depth[0] > 0
        assert (
            depth.shape == (1, 64, 64) and float(depth.max()) <= 1.0 and float(depth[0][valid].min()) >= 0.1
        )
        if aug is None:  # [0.1, 1] on valid pixels, 0 elsewhere (rotation may cut off the extremes)
            assert float(depth.max()) == pytest.approx(1.0) and float(depth[0][valid].min()) == pytest.approx(
                0.1
            )
        # the raised disc is the mask: nearer (lower depth) than every surrounding pixel, after any augmentation
        inside, outside = depth[0][mask & valid], depth[0][~mask & valid]
        assert float(inside.max()) < float(outside.min())
    plain = SegmentationDataset(records, labels, 64, resize="resize")
    assert "depth" not in plain[0]
    records[2].depth = None
    with pytest.raises(DataError, match="frame002.png has no depth map"):
        SegmentationDataset(records, labels, 64, depth_scale=0.001)
