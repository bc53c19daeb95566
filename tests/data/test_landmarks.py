"""Landmark curves: P2ILF colour contours and XML, per-class masks, line widths, camera intrinsics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_data
from medpeft.data.io import DataError
from medpeft.data.landmarks import (
    read_class_masks,
    read_colour_contours,
    read_contour_xml,
    read_intrinsics,
    thicken,
)


def test_p2ilf_colour_contours_give_three_disjoint_classes() -> None:
    root = shared_data("p2ilf-sample")
    masks = read_colour_contours(root / "masks" / "P2ILF22_patient1_12_GT.jpg")
    counts = {k: int(v.sum()) for k, v in masks.items()}
    assert counts == {"ridge": 14368, "ligament": 6325, "silhouette": 18872}  # tolerance 100 on the JPEG
    assert not (masks["ridge"] & masks["silhouette"]).any() and not (masks["ridge"] & masks["ligament"]).any()
    wider = read_colour_contours(root / "masks" / "P2ILF22_patient1_12_GT.jpg", line_width=5)
    assert all(wider[k].sum() > counts[k] and (wider[k] | masks[k]).sum() == wider[k].sum() for k in counts)


def test_p2ilf_xml_contours_and_intrinsics() -> None:
    root = shared_data("p2ilf-sample")
    curves = read_contour_xml(root / "patient2_1_contours_noimage.xml", (1080, 1920))
    assert {k: int(v.sum()) for k, v in curves.items()} == {"ridge": 1215, "ligament": 340, "silhouette": 578}
    cam = read_intrinsics(root / "acquisition-camera-metadata.json")
    assert (cam.width, cam.height) == (1920, 1080) and cam.fx == pytest.approx(952.0697, abs=1e-3)
    assert cam.matrix()[0, 2] == pytest.approx(884.4739, abs=1e-3) and cam.distortion[0] == pytest.approx(
        -0.23185, abs=1e-5
    )


def test_xml_polyline_drawing_and_errors(tmp_path: Path) -> None:
    xml = tmp_path / "c.xml"
    xml.write_text(
        "<contours><contour><contourType>Ridge</contourType><imagePoints><numOfPoints>2</numOfPoints>"
        "<x>2, 11</x><y>4, 4</y></imagePoints></contour></contours>"
    )
    curves = read_contour_xml(xml, (10, 16))
    assert curves["ridge"].sum() == 10 and curves["ridge"][4, 2:12].all() and curves["ligament"].sum() == 0
    xml.write_text("<contours><contour><contourType>Vessel</contourType></contour></contours>")
    with pytest.raises(DataError, match="contourType 'vessel'"):
        read_contour_xml(xml, (10, 16))


def test_thicken_and_class_masks(tmp_path: Path) -> None:
    line = np.zeros((9, 20), bool)
    line[4, 5:15] = True
    assert thicken(line, 1).sum() == 10
    assert thicken(line, 3).sum() == 3 * 10 + 2  # a disc of diameter 3 is a plus: one more pixel at each end
    with pytest.raises(ValueError, match="odd"):
        thicken(line, 2)
    Image.fromarray(line.astype(np.uint8) * 255).save(tmp_path / "ridge.png")
    assert read_class_masks({"ridge": tmp_path / "ridge.png"}, line_width=3)["ridge"].sum() == 32


def test_p2ilf_frame_reads_as_a_landmark_dataset() -> None:
    from medpeft.data.io import load_masks
    from medpeft.data.readers import detect_format, read_dataset

    root = shared_data("p2ilf-sample")
    assert detect_format(root) == "landmarks"  # the camera file and the _GT drawing name it
    records, labels = read_dataset(root)
    assert labels == ["ridge", "ligament", "silhouette"] and len(records) == 1
    masks = load_masks(records[0], labels)
    assert [int(m.sum()) for m in masks] == [14368, 6325, 18872]
    records, _ = read_dataset(root, line_width=5)
    assert all(
        int(w.sum()) > int(m.sum()) for w, m in zip(load_masks(records[0], labels), masks, strict=True)
    )


def _frame(root: Path, stem: str, size: int = 32) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), 90, np.uint8)).save(root / "images" / f"{stem}.png")


def test_l3d_class_masks_xml_and_depth_layouts(tmp_path: Path) -> None:
    from medpeft.data.io import load_masks
    from medpeft.data.readers import read_dataset

    l3d = tmp_path / "l3d"
    _frame(l3d, "a")
    for name, row in (("ridge", 5), ("silhouette", 20)):
        (l3d / "masks" / name).mkdir(parents=True)
        m = np.zeros((32, 32), np.uint8)
        m[row, 2:30] = 255
        Image.fromarray(m).save(l3d / "masks" / name / "a.png")
    (l3d / "depth").mkdir()
    np.save(l3d / "depth" / "a.npy", np.ones((32, 32), np.float32))
    records, labels = read_dataset(l3d, line_width=3)
    assert labels == ["ridge", "silhouette"] and records[0].depth == l3d / "depth" / "a.npy"
    masks = load_masks(records[0], labels)
    assert masks[0, 4:7, 2:30].all() and masks[0].sum() == 3 * 28 + 2  # a 3-px band (disc ends)
    assert masks[1, 19:22, 2:30].all() and not masks[1, :17].any()

    xml = tmp_path / "xml"
    _frame(xml, "b")
    (xml / "contours").mkdir()
    (xml / "contours" / "b.xml").write_text(
        "<root><contour><contourType>Ligament</contourType><imagePoints><x>2,29</x><y>10,10</y>"
        "</imagePoints></contour></root>"
    )
    records, labels = read_dataset(xml)
    assert labels == ["ridge", "ligament", "silhouette"] and records[0].depth is None
    masks = load_masks(records[0], labels)
    assert masks[1, 10, 2:30].all() and masks[1].sum() == 28 and not masks[[0, 2]].any()


def test_landmark_layout_errors_name_the_frame(tmp_path: Path) -> None:
    from medpeft.data.readers import read_dataset

    root = tmp_path / "lm"
    _frame(root, "a")
    (root / "contours").mkdir()
    with pytest.raises(DataError, match=r"images/a.png needs exactly one annotation.*found 0"):
        read_dataset(root)
    (root / "contours" / "a.xml").write_text("<root/>")
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "masks" / "a_GT.png")
    with pytest.raises(DataError, match="found 2"):
        read_dataset(root)
    (root / "masks" / "a_GT.png").unlink()
    (root / "depth").mkdir()
    np.save(root / "depth" / "other.npy", np.ones((32, 32), np.float32))
    with pytest.raises(DataError, match=r"depth: 1 frames without a depth map: a"):
        read_dataset(root)
