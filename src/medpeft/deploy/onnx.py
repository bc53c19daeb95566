"""ONNX export of a merged segmenter, as SAM deployments ship it, and onnxruntime behind the segmenter
interface.

Two graphs: the image encoder (image -> embeddings, run once per image) and the prompt decoder
(embeddings + labelled points + class ids [+ SAM's previous-mask input] -> logits, run per click), with a
dynamic batch, number of classes and number of points. Boxes travel as two corner points labelled 2 and 3
(:func:`medpeft.models.prompts.prompt_points`), so one decoder graph takes box, point and automatic
prompts alike. A 3D model (SegVol) gets a second decoder graph without the label-name token, because
that token changes how many prompt tokens there are.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medpeft.models.prompts import Prompts, prompt_points

FORMAT = "medpeft-onnx"
MANIFEST = "medpeft_onnx.json"
ENCODER = "image_encoder.onnx"
DECODER = "prompt_decoder.onnx"
DECODER_NO_TEXT = "prompt_decoder_no_text.onnx"  # 3D models: boxes/points without the label-name token
OPSET = 18
_MAX = 1024  # upper bound of the dynamic dimensions (batch, classes, points) the exporter is told


class EncoderGraph(nn.Module):
    """The image encoder as exported: images -> a tuple of embeddings (SAM: one map; SAM2: three FPN levels)."""

    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.segmenter.image_embeddings(images)
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)


class DecoderGraph2D(nn.Module):
    """SAM's and SAM2's prompt encoder + mask decoder, each (image, class) decoded as its own row, with
    SAM's dense mask input switched by ``has_mask_input`` (0 or 1), as in SAM's own ONNX decoder."""

    def __init__(self, segmenter: nn.Module, size: int) -> None:
        super().__init__()
        self.segmenter, self.size = segmenter, size

    def forward(
        self,
        embeddings: tuple[torch.Tensor, ...],
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        class_ids: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> torch.Tensor:
        seg = self.segmenter
        sparse = seg.prompt_tokens((point_coords, point_labels), class_ids)
        dense = seg.mask_prompt(mask_input, has_mask_input)
        embeddings = list(embeddings) if len(embeddings) > 1 else embeddings[0]
        return seg.decode_rows(embeddings, sparse, dense, (self.size, self.size))


class DecoderGraph3D(nn.Module):
    """SegVol's prompt encoder + mask decoder with (``text``) or without the label-name token."""

    def __init__(self, segmenter: nn.Module, text: bool) -> None:
        super().__init__()
        self.segmenter, self.text = segmenter, text

    def forward(
        self,
        embeddings: tuple[torch.Tensor, ...],
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        class_ids: torch.Tensor,
    ) -> torch.Tensor:
        seg = self.segmenter
        sparse, text = seg.prompt_tokens((point_coords, point_labels), class_ids, self.text)
        return seg.decode_tokens(embeddings[0], sparse, text, tuple(seg.roi))


def _embedding_names(count: int) -> list[str]:
    """SAM2's two high-resolution FPN levels come before the image embedding, as in its decoder."""
    return [f"high_res_features_{k}" for k in range(count - 1)] + ["image_embeddings"]


def _input_shape(model: nn.Module, batch: int) -> tuple[int, ...]:
    if getattr(model, "spatial_dims", 2) == 3:
        return (batch, int(model.segvol.config.in_channels), *model.roi)
    return (batch, 3, model.image_size, model.image_size)


def _decoder_sample(model: nn.Module, embeddings: tuple[torch.Tensor, ...], volume: bool) -> tuple:
    """Example decoder inputs whose batch (2), classes (3) and points (5) differ, so the exporter cannot
    tie one dynamic dimension to another."""
    batch, classes, points = embeddings[0].shape[0], 3, 5
    dims = 3 if volume else 2
    side = model.roi if volume else (model.image_size,) * 2
    coords = torch.rand(batch, classes, points, dims) * torch.tensor(side).float()
    labels = torch.tensor([1, 0, -1, 2, 3]).expand(batch, classes, points)
    class_ids = (torch.arange(classes) % model.num_classes).expand(batch, classes)
    if volume:
        return embeddings, coords, labels, class_ids
    low = model.image_size // 4
    return embeddings, coords, labels, class_ids, torch.zeros(batch, classes, low, low), torch.ones(1)


def _export(
    module: nn.Module,
    args: tuple,
    path: Path,
    names: list[str],
    shapes: tuple,
    opset: int,
    outputs: list[str],
) -> None:
    """torch.onnx (dynamo) export with the exporter's own chatter silenced (its warnings are about
    internals, not the user's model)."""
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names,
            output_names=outputs,
            dynamic_shapes=shapes,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
            report=False,
        )


def _dim(name: str) -> torch.export.Dim:
    return torch.export.Dim(name, min=1, max=_MAX)


@torch.no_grad()
def export_graphs(model: nn.Module, out: Path, opset: int = OPSET) -> dict[str, Any]:
    """Write the encoder and decoder graph(s) of a merged (adapter-free) segmenter into ``out``; returns the
    manifest fields that describe them."""
    model.eval()
    volume = getattr(model, "spatial_dims", 2) == 3
    images = torch.randn(_input_shape(model, 2))
    encoder = EncoderGraph(model)
    embeddings = encoder(images)
    names = _embedding_names(len(embeddings))
    batch, classes, points = _dim("batch"), _dim("classes"), _dim("points")
    _export(encoder, (images,), out / ENCODER, ["images"], ({0: batch},), opset, names)
    inputs = [*names, "point_coords", "point_labels", "class_ids"]
    per_point = {0: batch, 1: classes, 2: points}
    shapes: tuple = (tuple({0: batch} for _ in embeddings), per_point, per_point, {0: batch, 1: classes})
    sample = _decoder_sample(model, embeddings, volume)
    decoders = {"decoder": DECODER}
    if volume:
        for text, file in ((True, DECODER), (False, DECODER_NO_TEXT)):
            _export(DecoderGraph3D(model, text), sample, out / file, inputs, shapes, opset, ["logits"])
        decoders["decoder_no_text"] = DECODER_NO_TEXT
    else:
        inputs += ["mask_input", "has_mask_input"]
        shapes = (*shapes, {0: batch, 1: classes}, None)
        _export(
            DecoderGraph2D(model, model.image_size), sample, out / DECODER, inputs, shapes, opset, ["logits"]
        )
    return {
        "opset": opset,
        "encoder": ENCODER,
        **decoders,
        "embeddings": names,
        "decoder_inputs": inputs,
        "corner_labels": list(model.corner_labels),
        "spatial_dims": 3 if volume else 2,
        "image_size": int(model.image_size),
        "roi": list(model.roi) if volume else None,
        "in_channels": int(images.shape[1]),
        "label_names": list(model.label_names),
        "class_prompt": getattr(model, "class_prompt", None) is not None,
    }


def export_onnx(checkpoint: Path | str, out: Path, opset: int = OPSET) -> dict[str, Any]:
    """``medpeft export --format onnx``: merge the checkpoint's adapters, export both graphs, check them
    with onnxruntime against PyTorch, and write ``medpeft_onnx.json``; returns the manifest.

    The folder is built in a temporary sibling and renamed, so ``out`` is either the complete export or
    untouched; an existing ``out`` is replaced only when it is an earlier export (the caller asks first).
    """
    from medpeft.engine.merge import fold_adapters, replace_folder
    from medpeft.engine.restore import load_trained

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ValueError(f"{out} holds files that are not a medpeft ONNX export; refusing to replace them")
    model, record, cfg = load_trained(checkpoint)
    if cfg.task not in ("segmentation", "volume_segmentation") or cfg.model.depth_guided is not None:
        raise ValueError(
            f"{checkpoint} is a {cfg.task}{' depth-guided' if cfg.model.depth_guided else ''} model; ONNX export "
            "covers the promptable segmenters (SAM, SAM2, SegVol): predict from the checkpoint itself"
        )
    if not hasattr(model, "corner_labels"):
        raise ValueError(f"backbone {cfg.model.backbone!r} is not a promptable segmenter; nothing to export")
    fold_adapters(model, cfg)

    def write(tmp: Path) -> dict[str, Any]:
        manifest = {
            "format": FORMAT,
            "backbone": cfg.model.backbone,
            "task": cfg.task,
            **export_graphs(model, tmp, opset),
            "threshold": cfg.eval.threshold,
            "merged_from": str(checkpoint),
            "config": record.config,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        manifest["max_abs_difference"] = compare(model, OnnxSegmenter(tmp))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        return manifest

    return replace_folder(out, write)


def probe_prompts(model: Any, batch: int, gen: torch.Generator) -> dict[str, Prompts]:
    """Box, point and automatic prompts (and, in 2D, a point with a previous mask) for every class, in
    the model's input frame: what an export is checked on."""
    classes = len(model.label_names)
    volume = model.spatial_dims == 3
    side = torch.tensor(model.roi if volume else (model.image_size,) * 2).float()
    low = torch.rand(batch, classes, 2, len(side), generator=gen) * side / 2
    high = low + side / 4 + torch.rand(batch, classes, 2, len(side), generator=gen) * side / 4
    lo, hi = low[:, :, 0], high[:, :, 0]
    if not volume:  # (x, y) order in 2D
        lo, hi = lo.flip(-1), hi.flip(-1)
    boxes = torch.cat([lo, hi], -1)
    points = (low + high) / 2
    labels = torch.tensor([1, 0]).expand(batch, classes, 2)
    if not volume:
        points = points.flip(-1)
    ids = torch.arange(classes).expand(batch, -1)
    cases = {
        "box": Prompts(boxes=boxes, class_ids=ids, text=False),
        "point": Prompts(points=points, point_labels=labels, class_ids=ids, text=False),
    }
    if model.class_prompt or classes == 1:
        cases["auto"] = Prompts(class_ids=ids)
    if not volume:
        size = model.image_size // 4
        masks = torch.randn(batch, classes, size, size, generator=gen) * 4
        cases["point+mask"] = Prompts(points=points, point_labels=labels, class_ids=ids, masks=masks)
    return cases


@torch.no_grad()
def compare(model: nn.Module, exported: OnnxSegmenter, seed: int = 0) -> dict[str, float]:
    """Max |logit| difference between PyTorch and onnxruntime per prompt kind, over batches of 1 and 2
    random inputs (and of the encoder's embeddings)."""
    gen = torch.Generator().manual_seed(seed)
    worst: dict[str, float] = {}
    for batch in (1, 2):
        images = torch.randn(_input_shape(model, batch), generator=gen)
        ours = EncoderGraph(model)(images)
        theirs = exported.image_embeddings(images)
        theirs = theirs if isinstance(theirs, list) else [theirs]
        diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True))
        worst["embeddings"] = max(worst.get("embeddings", 0.0), diff)
        for kind, prompts in probe_prompts(exported, batch, gen).items():
            diff = float((model(images, prompts) - exported(images, prompts)).abs().max())
            worst[kind] = max(worst.get(kind, 0.0), diff)
    return worst


def _session(path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError(
            "onnxruntime is not installed; install the deploy extra: pip install 'medpeft[deploy]'"
        ) from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = torch.get_num_threads()  # as many as PyTorch, not every core
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads yield the CPU
    # onnxruntime-gpu lists CUDA first; Azure's is a remote endpoint provider, never wanted here
    providers = [p for p in ort.get_available_providers() if p != "AzureExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)


def read_manifest(folder: Path) -> dict[str, Any]:
    """The export's ``medpeft_onnx.json``, checked; one-line errors name the file."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ValueError(
            f"{folder}: no {MANIFEST}; expected a folder written by medpeft export --format onnx"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f'{path}: expected "format": "{FORMAT}"')
    for key in ("encoder", "decoder"):
        if not (Path(folder) / str(manifest.get(key))).is_file():
            raise ValueError(f"{path}: {key} graph {manifest.get(key)!r} is missing from {folder}")
    return manifest


class OnnxSegmenter:
    """An exported model behind the segmenter interface (``image_embeddings``, ``segment``, calling it
    with images and :class:`Prompts`), so predict, evaluate's loops and serve run it unchanged."""

    training = False
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        m = self.manifest
        self.label_names: list[str] = list(m["label_names"])
        self.image_size: int = int(m["image_size"])
        self.spatial_dims: int = int(m["spatial_dims"])
        self.corner_labels = tuple(m["corner_labels"])
        self.class_prompt = bool(m["class_prompt"])
        if self.spatial_dims == 3:
            self.roi = tuple(m["roi"])
        self.encoder = _session(self.folder / m["encoder"])
        self.decoder = _session(self.folder / m["decoder"])
        self.decoder_no_text = (
            _session(self.folder / m["decoder_no_text"]) if m.get("decoder_no_text") else None
        )

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def eval(self) -> OnnxSegmenter:
        return self

    def train(self, mode: bool = True) -> OnnxSegmenter:
        return self

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The encoder graph: SAM's and SegVol's one embedding, SAM2's three FPN levels (a list)."""
        outs = self.encoder.run(None, {"images": images.detach().float().cpu().numpy()})
        tensors = [torch.from_numpy(o) for o in outs]
        return tensors if len(tensors) > 1 else tensors[0]

    def segment(
        self, embeddings: torch.Tensor | list[torch.Tensor], prompts: Prompts | None, size: tuple[int, ...]
    ) -> torch.Tensor:
        """The decoder graph on the embeddings and ``prompts``: logits ``[B, C, *size]``."""
        prompts = prompts or Prompts()
        embeddings = embeddings if isinstance(embeddings, (list, tuple)) else [embeddings]
        batch = embeddings[0].shape[0]
        class_ids = prompts.class_ids
        if class_ids is None:
            class_ids = torch.arange(prompts.num_classes() or self.num_classes).expand(batch, -1)
        points = prompt_points(prompts, self.corner_labels)
        dims = 3 if self.spatial_dims == 3 else 2
        if points is None:
            class_token = self.class_prompt and (dims == 2 or prompts.text)
            if not class_token and (dims == 3 or class_ids.shape[1] > 1):
                raise ValueError("no prompt given and no class prompt in this export: give boxes or points")
            points = (
                torch.zeros(*class_ids.shape, 0, dims),
                torch.zeros(*class_ids.shape, 0, dtype=torch.long),
            )
        feeds = {
            name: e.detach().float().cpu().numpy()
            for name, e in zip(self.manifest["embeddings"], embeddings, strict=True)
        }
        feeds["point_coords"] = points[0].float().cpu().numpy()
        feeds["point_labels"] = points[1].long().cpu().numpy()
        feeds["class_ids"] = class_ids.long().cpu().numpy()
        decoder = self.decoder
        if dims == 2:
            low = self.image_size // 4
            masks = prompts.masks
            feeds["mask_input"] = (
                np.zeros((*class_ids.shape, low, low), np.float32)
                if masks is None
                else masks.float().cpu().numpy()
            )
            feeds["has_mask_input"] = np.array([0.0 if masks is None else 1.0], np.float32)
        elif not prompts.text or not self.class_prompt:
            decoder = self.decoder_no_text
        logits = torch.from_numpy(decoder.run(None, feeds)[0])
        if tuple(logits.shape[2:]) != tuple(size):
            mode = "trilinear" if dims == 3 else "bilinear"
            logits = torch.nn.functional.interpolate(logits, size=tuple(size), mode=mode, align_corners=False)
        return logits

    def __call__(self, images: torch.Tensor, prompts: Prompts | None = None) -> torch.Tensor:
        return self.segment(self.image_embeddings(images), prompts, tuple(images.shape[2:]))


def load_onnx(folder: Path | str) -> tuple[OnnxSegmenter, Any]:
    """An export folder as (model, the training config it recorded) for ``predict --engine onnx``."""
    from medpeft.config import parse_recorded_config

    model = OnnxSegmenter(folder)
    return model, parse_recorded_config(model.manifest["config"], source=str(Path(folder) / MANIFEST))
