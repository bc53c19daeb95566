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
