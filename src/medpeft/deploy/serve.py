"""``medpeft serve``: a local page to open an image or volume, click points, drag boxes or pick a label
(automatic mode), see the mask at once and download it.

FastAPI and one plain HTML page (``page.html``, no external scripts, so it works offline and inside a
hospital network); the model runs in this process, PyTorch or an ONNX export. Each image (or volume
slice) is encoded once and its embedding reused across clicks; each click sends every click so far and,
as SAM does, the previous low-resolution logits of that label as the mask input.
"""

from __future__ import annotations

import io
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image

from medpeft.data.io import IMAGE_EXTENSIONS, DataError, load_image, one_line
from medpeft.data.transforms import model_input, undo_resize
from medpeft.data.volume_io import Volume, read_volume, to_uint8, write_label_volume
from medpeft.data.volumes import from_display, to_display
from medpeft.models.prompts import Prompts
from medpeft.tasks.segmentation_clicks import to_mask_input
from medpeft.tasks.segmentation_predict import image_prompts
from medpeft.viz import class_colours, label_map, overlay

PAGE = Path(__file__).with_name("page.html")
VOLUME_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
CACHED_EMBEDDINGS = 32  # images / slices whose embeddings are kept (least recently used dropped)
OPEN_FILES = 8  # files kept open at once


@dataclass
class Opened:
    """One uploaded file: display pixels, the label map being edited, and (volumes) the source grid."""

    name: str
    pixels: np.ndarray  # image [H, W, 3] uint8, or volume [X, Y, Z] uint8 in RAS
    labels: np.ndarray  # [H, W] or [X, Y, Z] label map (0 background, c + 1 label c)
    volume: Volume | None = None
    low_res: dict[tuple, torch.Tensor] = field(default_factory=dict)  # (axis, index, class) -> last logits

    @property
    def is_volume(self) -> bool:
        return self.volume is not None

    def view(self, axis: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The (image [H, W, 3], label map [H, W]) shown for a slice (the image itself for 2D)."""
        if not self.is_volume:
            return self.pixels, self.labels
        if not (0 <= axis < 3 and 0 <= index < self.pixels.shape[axis]):
            raise DataError(f"slice {index} on axis {axis} is outside the volume {self.pixels.shape}")
        image = to_display(np.take(self.pixels, index, axis=axis))
        return np.repeat(image[..., None], 3, -1), to_display(np.take(self.labels, index, axis=axis))

    def store(self, axis: int, index: int, labels: np.ndarray) -> None:
        """Write a slice's (display-oriented) label map back."""
        if not self.is_volume:
            self.labels = labels
            return
        where = [slice(None)] * 3
        where[axis] = index
        self.labels[tuple(where)] = from_display(labels)


class Server:
    """The model and what the page has opened; every method answers one request (thread-safe)."""

    def __init__(self, model: Any, cfg: Any, engine: str, max_upload_mb: float = 512, window: Any = None):
        self.model, self.cfg, self.engine = model, cfg, engine
        self.max_bytes = int(max_upload_mb * 1024 * 1024)
        self.window = (
            window if window is not None else (cfg.data.window if cfg.task == "volume_segmentation" else None)
        )
        self.labels = list(model.label_names)
        self.colours = class_colours(self.labels)
        self.volume_model = getattr(model, "spatial_dims", 2) == 3
        self.files: OrderedDict[str, Opened] = OrderedDict()
        self.embeddings: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()
        self.lock = threading.Lock()
        self.tmp = tempfile.TemporaryDirectory(prefix="medpeft-serve-")
        self.counter = 0
        model.eval()

    def info(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "colours": self.colours.astype(int).tolist(),
            "engine": self.engine,
            "backbone": self.cfg.model.backbone,
            "image_size": int(self.model.image_size),
            "volume_model": self.volume_model,
            "max_upload_mb": self.max_bytes / 2**20,
            "accepts": sorted({*IMAGE_EXTENSIONS, *DICOM_SUFFIXES, *VOLUME_SUFFIXES}),
        }

    # -- files -------------------------------------------------------------------------------------
    def open(self, name: str, data: bytes) -> dict[str, Any]:
        """Decode an upload (checked: size, type, content); one-line :class:`DataError` otherwise."""
        name = Path(name or "upload").name
        if len(data) > self.max_bytes:
            raise DataError(
                f"{name}: {len(data) / 2**20:.1f} MB exceeds the upload limit of {self.max_bytes / 2**20:.0f} MB"
            )
        lower = name.lower()
        kind = (
            "volume"
            if lower.endswith(VOLUME_SUFFIXES)
            else "dicom"
            if lower.endswith(DICOM_SUFFIXES)
            else "image"
        )
        if kind == "image" and Path(lower).suffix not in IMAGE_EXTENSIONS:
            raise DataError(
                f"{name}: unsupported file type; expected one of {', '.join(self.info()['accepts'])}"
            )
        if self.volume_model and kind != "volume":
            raise DataError(f"{name}: this is a 3D model; open a NIfTI volume (.nii / .nii.gz)")
        with self.lock:
            self.counter += 1
            key = f"f{self.counter}"
        path = Path(self.tmp.name) / key / name
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        try:
            opened = self._decode(path, kind)
        except (DataError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            reason = one_line(e).replace(str(path), name)  # the user's file name, not the server's copy
            what = "an image" if kind == "image" else f"a {kind}"
            raise DataError(f"{name}: cannot read it as {what}: {reason}") from None
        with self.lock:
            self.files[key] = opened
            while len(self.files) > OPEN_FILES:
                self.files.popitem(last=False)
        shape = list(opened.pixels.shape[:2] if not opened.is_volume else opened.pixels.shape)
        return {"id": key, "name": name, "kind": "volume" if opened.is_volume else "image", "shape": shape}

    def _decode(self, path: Path, kind: str) -> Opened:
        if kind == "volume":
            volume = read_volume(path)
            if volume.array.ndim != 3 or min(volume.array.shape) < 1:
                raise DataError(f"expected a 3D volume, got shape {volume.array.shape}")
            pixels = to_uint8(volume.array, self.window)
            return Opened(path.name, pixels, np.zeros(pixels.shape, np.uint8), volume)
        if kind == "dicom":
            import pydicom

            try:
                array = np.asarray(pydicom.dcmread(path).pixel_array, np.float32)
            except Exception as e:  # pydicom raises many types for a broken file
                raise DataError(one_line(e)) from None
            if array.ndim != 2:
                raise DataError(f"expected a single 2D DICOM image, got pixel data of shape {array.shape}")
            image = to_uint8(array[..., None], None)[..., 0]
            pixels = np.repeat(image[..., None], 3, -1)
        else:
            pixels = load_image(path)
        return Opened(path.name, pixels, np.zeros(pixels.shape[:2], np.uint8))

    def _file(self, key: str) -> Opened:
        if key not in self.files:
            raise DataError(f"no open file {key!r}; open the image again")
        self.files.move_to_end(key)
        return self.files[key]

    # -- pictures ------------------------------------------------------------------------------------
    def picture(self, key: str, axis: int = 2, index: int = 0) -> bytes:
        """The slice (or image) with its current masks overlaid, as PNG."""
        image, labels = self._file(key).view(axis, index)
        return _png(self._overlay(image, labels))

    def _overlay(self, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        masks = labels[None] == np.arange(1, len(self.labels) + 1)[:, None, None]
        return overlay(image, masks, alpha=0.5, colours=self.colours)

    # -- segmentation --------------------------------------------------------------------------------
    def _embedding(self, key: str, axis: int, index: int, image: np.ndarray) -> tuple[Any, Any, bool]:
        cache = (key, axis, index)
        if cache in self.embeddings:
            self.embeddings.move_to_end(cache)
            return (*self.embeddings[cache], True)
        cfg = self.cfg.data
        tensor, meta = model_input(image, self.model.image_size, cfg.resize, cfg.normalize)
        with torch.no_grad():
            embeddings = self.model.image_embeddings(tensor.to(self.model.device))
        self.embeddings[cache] = (embeddings, meta)
        while len(self.embeddings) > CACHED_EMBEDDINGS:
            self.embeddings.popitem(last=False)
        return embeddings, meta, False

    def segment(self, request: dict[str, Any]) -> dict[str, Any]:
        """Segment one label from clicks and/or a box, or every label (``auto``), on one image or slice;
        the label map is updated and the new overlay returned (PNG bytes under ``picture``)."""
        started = time.perf_counter()
        key = str(request.get("id"))
        axis, index = int(request.get("axis", 2)), int(request.get("index", 0))
        with self.lock:
            item = self._file(key)
            if self.volume_model:
                return self._segment_3d(item, request, axis, index, started)
            image, labels = item.view(axis, index)
            labels = labels.copy()
            embeddings, meta, cached = self._embedding(key, axis, index, image)
            threshold = self.cfg.eval.threshold
            size = (self.model.image_size,) * 2
            if request.get("auto"):
                prompts = Prompts(class_ids=torch.arange(len(self.labels))[None])
                with torch.no_grad():
                    logits = self.model.segment(embeddings, prompts.to(self.model.device), size)
                prob = undo_resize(torch.sigmoid(logits[0]).float().cpu(), meta, "bilinear").numpy()
                labels = label_map(prob > threshold, prob).astype(labels.dtype)
                done = "all labels"
            else:
                c, prompts = self._prompts(request, image.shape[:2], meta)
                if prompts is None:  # nothing left: clear this label here
                    labels[labels == c + 1] = 0
                    item.low_res.pop((axis, index, c), None)
                else:
                    previous = item.low_res.get((axis, index, c)) if request.get("refine") else None
                    prompts.masks = previous
                    with torch.no_grad():
                        logits = self.model.segment(embeddings, prompts.to(self.model.device), size)
                    logits = logits.float().cpu()
                    item.low_res[(axis, index, c)] = to_mask_input(logits)
                    prob = undo_resize(torch.sigmoid(logits[0]), meta, "bilinear").numpy()[0]
                    labels[labels == c + 1] = 0
                    labels[prob > threshold] = c + 1
                done = self.labels[c]
            item.store(axis, index, labels)
            counts = {n: int((labels == i + 1).sum()) for i, n in enumerate(self.labels)}
            return {
                "picture": _png(self._overlay(image, labels)),
                "pixels": counts,
                "ms": round((time.perf_counter() - started) * 1000, 1),
                "embedding_cached": cached,
                "segmented": done,
            }

    def _prompts(self, request: dict[str, Any], hw: tuple[int, int], meta: Any) -> tuple[int, Prompts | None]:
        """The label index and its prompts in the model's input frame (None when there are none); bad
        values are a one-line :class:`DataError` naming them."""
        name = request.get("label")
        if name not in self.labels:
            raise DataError(f"label {name!r}: expected one of {self.labels}")
        c = self.labels.index(name)
        h, w = hw
        points = request.get("points") or []
        box = request.get("box")
        entry: dict[str, Any] = {}
        if points:
            try:
                xy = np.array([[float(p[0]), float(p[1])] for p in points], np.float32)
                lab = np.array([int(p[2]) if len(p) > 2 else 1 for p in points], np.int64)
            except (TypeError, ValueError, IndexError):
                raise DataError(f"points {str(points)[:80]}: expected [[x, y, 1|0], ...]") from None
            if not (
                np.isfinite(xy).all() and (xy >= 0).all() and (xy[:, 0] <= w).all() and (xy[:, 1] <= h).all()
            ):
                raise DataError(f"points {str(points)[:80]}: outside the {w}x{h} image")
            if not np.isin(lab, (0, 1)).all():
                raise DataError(f"points {str(points)[:80]}: labels must be 1 (object) or 0 (background)")
            entry["points"] = {name: [[*map(float, p), int(q)] for p, q in zip(xy, lab, strict=True)]}
        if box is not None:
            try:
                x1, y1, x2, y2 = (float(v) for v in box)
            except (TypeError, ValueError):
                raise DataError(f"box {box!r}: expected [x1, y1, x2, y2]") from None
            if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
                raise DataError(f"box {box!r}: expected 0 <= x1 < x2 <= {w} and 0 <= y1 < y2 <= {h}")
            entry["boxes"] = {name: [x1, y1, x2, y2]}
        if not entry:
            return c, None
        prompts, _ = image_prompts(entry, [name], meta)  # scaled to the model's input as predict does
        prompts.class_ids = torch.tensor([[c]])  # the one label, by its index in the model
        return c, prompts

    def _segment_3d(
        self, item: Opened, request: dict[str, Any], axis: int, index: int, started: float
    ) -> dict:
        """A 3D model segments the whole volume (zoom-out-zoom-in): every label by name (``auto``), or one
        label from the clicks on this slice (as 3D points); no embedding is cached (the zoom-in crops)."""
        from medpeft.engine.volume3d import ras_prompts, segment_volume_3d

        shape = item.pixels.shape
        if request.get("auto"):
            labels, _ = segment_volume_3d(
                self.model, item.pixels, None, True, "zoom", self.cfg.eval.threshold
            )
            item.labels = labels.astype(np.uint8)
            done = "all labels"
        else:
            name = request.get("label")
            if name not in self.labels:
                raise DataError(f"label {name!r}: expected one of {self.labels}")
            if request.get("box") is not None:
                raise DataError("a 3D model takes clicks or label names on this page, not a 2D box")
            a0, a1 = [i for i in range(3) if i != axis]
            ras = []
            for p in request.get("points") or []:
                voxel = [0.0, 0.0, 0.0, int(p[2]) if len(p) > 2 else 1]
                voxel[axis], voxel[a0], voxel[a1] = (
                    index,
                    shape[a0] - 1 - float(p[0]),
                    shape[a1] - 1 - float(p[1]),
                )
                ras.append(voxel)
            c = self.labels.index(name)
            item.labels[item.labels == c + 1] = 0
            if ras:
                given = ras_prompts(None, {name: ras})
                labels, _ = segment_volume_3d(
                    self.model, item.pixels, given, False, "zoom", self.cfg.eval.threshold
                )
                item.labels[labels == c + 1] = c + 1
            done = name
        image, labels = item.view(axis, index)
        return {
            "picture": _png(self._overlay(image, labels)),
            "pixels": {n: int((item.labels == i + 1).sum()) for i, n in enumerate(self.labels)},
            "ms": round((time.perf_counter() - started) * 1000, 1),
            "embedding_cached": False,
            "segmented": done,
        }

    def mask(self, key: str) -> tuple[bytes, str, str]:
        """The label map to download: (bytes, file name, media type); a NIfTI on the input's grid and
        affine for a volume, a PNG (0 background, c + 1 label c) for an image."""
        item = self._file(key)
        stem = item.name.removesuffix(".gz").removesuffix(".nii") if item.is_volume else Path(item.name).stem
        if not item.is_volume:
            return _png(item.labels), f"{stem}_mask.png", "image/png"
        out = Path(self.tmp.name) / key / f"{stem}_mask.nii.gz"
        table = {i + 1: n for i, n in enumerate(self.labels)}
        write_label_volume(out, item.labels, item.volume, table)
        return out.read_bytes(), out.name, "application/gzip"


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_app(server: Server):
    """The FastAPI app: the page, and JSON/PNG endpoints; a bad request is a 400 with ``{"error": line}``."""
    import base64

    app = FastAPI(title="medpeft", docs_url=None, redoc_url=None)

    @app.exception_handler(DataError)
    async def _bad(_: Request, e: DataError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=400)

    @app.exception_handler(Exception)
    async def _broken(_: Request, e: Exception) -> JSONResponse:  # the server keeps serving
        return JSONResponse({"error": f"internal error: {one_line(e)}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/api/info")
    def info() -> dict:
        return server.info()

    @app.post("/api/open")
    async def open_file(request: Request, file: UploadFile) -> dict:
        declared = int(request.headers.get("content-length") or 0)
        if declared > server.max_bytes + 1024 * 1024:
            raise DataError(f"{file.filename}: upload exceeds the limit of {server.max_bytes / 2**20:.0f} MB")
        data = await file.read(server.max_bytes + 1)
        return server.open(file.filename or "upload", data)

    @app.get("/api/picture/{key}")
    def picture(key: str, axis: int = 2, index: int = 0) -> Response:
        return Response(server.picture(key, axis, index), media_type="image/png")

    @app.post("/api/segment")
    async def segment(request: Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise DataError("expected a JSON body") from None
        if not isinstance(body, dict):
            raise DataError("expected a JSON object")
        result = server.segment(body)
        result["picture"] = "data:image/png;base64," + base64.b64encode(result["picture"]).decode()
        return result

    @app.get("/api/mask/{key}")
    def mask(key: str) -> Response:
        data, name, media = server.mask(key)
        return Response(
            data, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'}
        )

    return app


def load_server(path: Path, engine: str = "auto", max_upload_mb: float = 512, window: Any = None) -> Server:
    """A :class:`Server` for a checkpoint / run (PyTorch) or an ONNX export folder (``auto``: by content)."""
    from medpeft.deploy.onnx import MANIFEST, load_onnx

    if engine == "auto":
        engine = "onnx" if (Path(path) / MANIFEST).is_file() else "torch"
    if engine == "onnx":
        model, cfg = load_onnx(path)
    else:
        from medpeft.engine.restore import load_trained

        model, _, cfg = load_trained(path)
    if cfg.task not in ("segmentation", "volume_segmentation") or cfg.model.depth_guided is not None:
        raise DataError(f"{path}: a {cfg.task} model; the page serves the promptable segmenters")
    return Server(model, cfg, engine, max_upload_mb, window)
