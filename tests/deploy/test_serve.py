"""``medpeft serve`` end to end in headless Chromium (Debian's ``chromium`` driven by Playwright): open an
image, click, see the overlay, download the mask and compare it with the library's prediction; a volume
with the slice slider; a bad upload is a message and the server keeps serving."""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import make_shapes_dataset, tiny_config_dict
from medpeft.cli import app

pytest.importorskip("fastapi")
runner = CliRunner()
ZOOM = 10  # the page shows a 64 px image 640 px wide


def _browser_path() -> str | None:
    for name in (os.environ.get("MEDPEFT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("serve")
    data = make_shapes_dataset(root / "shapes", n=8, big=True)
    cfg = tiny_config_dict(data, root / "run", epochs=1, max_steps=2)
    cfg["model"]["class_prompt"] = "learned"
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", str(root / "config.yaml")])
    assert result.exit_code == 0, result.output
    return root / "run", data


@pytest.fixture(scope="module")
def server(run):
    """The app on a free local port in a thread."""
    import uvicorn

    from medpeft.deploy.serve import load_server, make_app

    backend = load_server(run[0])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(make_app(backend), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not web.started and time.time() < deadline:
        time.sleep(0.05)
    assert web.started
    yield f"http://127.0.0.1:{port}", backend
    web.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    path = _browser_path()
    if path is None:
        pytest.skip(
            "no Chromium found (apt install chromium, or set MEDPEFT_CHROMIUM): the page test needs a browser"
        )
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        except Exception as e:  # a browser that cannot start here (sandbox, libraries)
            pytest.skip(f"{path} does not start headless: {str(e).splitlines()[0]}")
        yield chromium
        chromium.close()


def _wait_status(page, prefix: str) -> str:
    page.wait_for_function(
        f"document.getElementById('status').textContent.startsWith({prefix!r})", timeout=30000
    )
    return page.locator("#status").text_content()


def _canvas(page) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.locator("#canvas").screenshot())).convert("RGB")).astype(int)


def _click(page, x: int, y: int) -> None:
    """Click image pixel (x, y) at its centre (the page then sends x + 0.5, y + 0.5)."""
    box = page.locator("#canvas").bounding_box()
    page.mouse.click(box["x"] + x * ZOOM + ZOOM / 2, box["y"] + y * ZOOM + ZOOM / 2)


def test_click_shows_an_overlay_and_the_download_is_the_library_prediction(run, server, browser, tmp_path):
    from medpeft.data.io import load_image
    from medpeft.data.transforms import model_input, undo_resize
    from medpeft.engine.restore import load_trained
    from medpeft.models.prompts import Prompts

    url, backend = server
    image_path = run[1] / "images" / "img001.png"
    disc = np.asarray(Image.open(run[1] / "masks" / "img001.png")) == 1
    ys, xs = np.nonzero(disc)
    x, y = int(np.median(xs)), int(np.median(ys))
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function("document.getElementById('label').options.length == 2")
    page.set_input_files("#file", str(image_path))
    _wait_status(page, "opened")
    before = _canvas(page)
    _click(page, x, y)
    status = _wait_status(page, "segmented disc")
    after = _canvas(page)
    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / "mask.png"
    download.value.save_as(saved)
    got = np.asarray(Image.open(saved))

    # the library, same prompt: the positive point the page sent (the pixel centre), label "disc"
    (sent,) = page.evaluate("points")
    assert sent == [x + 0.5, y + 0.5, 1]
    model, _, cfg = load_trained(run[0])
    image = load_image(image_path)
    tensor, meta = model_input(image, 64, cfg.data.resize, cfg.data.normalize)
    prompts = Prompts(
        points=torch.tensor([[[sent[:2]]]]),
        point_labels=torch.ones(1, 1, 1).long(),
        class_ids=torch.tensor([[0]]),
    )
    with torch.no_grad():
        prob = undo_resize(torch.sigmoid(model(tensor, prompts)[0]), meta, "bilinear").numpy()[0]
    expected = prob > cfg.eval.threshold
    assert expected.sum() > 20, "the tiny model predicts nothing here; the overlay check would be empty"
    assert got.shape == (64, 64) and set(np.unique(got)) <= {0, 1}
    assert np.array_equal(got == 1, expected)
    assert f"disc: {int(expected.sum())}" in status
    # the overlay: mask pixels changed colour on screen, the others did not (the click marker aside)
    shown = np.kron(expected, np.ones((ZOOM, ZOOM), bool))
    changed = np.abs(after - before).sum(-1) > 30
    marker = np.zeros_like(shown)
    marker[y * ZOOM - 20 : y * ZOOM + 30, x * ZOOM - 20 : x * ZOOM + 30] = True
    assert changed[shown & ~marker].mean() > 0.9 and changed[~shown & ~marker].mean() < 0.01
    # a second click reuses the image embedding and refines from the last mask
    _click(page, 2, 2)
    assert "embedding cached" in _wait_status(page, "segmented disc")
    page.close()


def test_a_volume_with_the_slider_downloads_a_nifti_on_its_grid(server, browser, tmp_path):
    url, _ = server
    rng = np.random.default_rng(0)
    data = rng.normal(100, 10, (64, 64, 7)).astype(np.float32)
    yy, xx = np.mgrid[:64, :64]
    data[(yy - 30) ** 2 + (xx - 34) ** 2 < 150] = 220
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    affine[:3, 3] = [-20, 15, 40]
    volume = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(volume))
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function("document.getElementById('label').options.length == 2")
    page.set_input_files("#file", str(volume))
    _wait_status(page, "opened")
    assert page.locator("#volume").is_visible() and page.locator("#slice").get_attribute("max") == "6"
    page.locator("#slice").fill("2")
    _wait_status(page, "showing case.nii.gz slice 2")
    page.click("#auto")
    status = _wait_status(page, "segmented all labels")
    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "case_mask.nii.gz"
    mask = nib.load(str(saved))
    labels = np.asarray(mask.dataobj)
    assert labels.shape == data.shape and np.allclose(mask.affine, affine)
    assert labels.any() and not labels[:, :, [0, 1, 3, 4, 5, 6]].any()  # only the slice segmented
    counts = dict(part.split(": ") for part in status.split("; ")[1].split(", "))
    assert int(counts["disc"]) == int((labels == 1).sum()) and int(counts["square"]) == int(
        (labels == 2).sum()
    )
    page.close()


def test_a_bad_upload_is_a_message_and_the_server_keeps_serving(run, server, browser, tmp_path):
    url, _ = server
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function("document.getElementById('label').options.length == 2")
    page.set_input_files("#file", str(bad))
    page.wait_for_function("document.getElementById('message').textContent.length > 0")
    text = page.locator("#message").text_content()
    assert page.locator("#message").get_attribute("class") == "error"
    assert "broken.png" in text and "cannot read" in text and "/tmp" not in text
    page.set_input_files("#file", str(run[1] / "images" / "img002.png"))
    _wait_status(page, "opened img002.png")
    assert page.locator("#message").text_content() == ""
    page.close()


def test_uploads_are_checked(run, server) -> None:
    from medpeft.data.io import DataError

    _, backend = server
    with pytest.raises(DataError, match="exceeds the upload limit"):
        backend.open("big.png", b"0" * (backend.max_bytes + 1))
    with pytest.raises(DataError, match="unsupported file type"):
        backend.open("notes.txt", b"hello")
    opened = backend.open("img000.png", (run[1] / "images" / "img000.png").read_bytes())
    for bad, words in (
        ({"label": "liver", "points": [[3, 3, 1]]}, "'liver'"),
        ({"label": "disc", "points": [[300, 3, 1]]}, "outside the 64x64 image"),
        ({"label": "disc", "points": [[3, 3, 7]]}, "labels must be 1"),
        ({"label": "disc", "box": [10, 10, 5, 40]}, "x1 < x2"),
    ):
        with pytest.raises(DataError, match=words):
            backend.segment({"id": opened["id"], **bad})
