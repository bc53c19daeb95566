"""The YAML config: pydantic models with defaults that work, and ``--set a.b=c`` overrides."""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medpeft.adapters.registry import get_method
from medpeft.data.transforms import AugmentConfig


class ConfigError(ValueError):
    """A config problem a user can act on; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DepthGuidedConfig(_Strict):
    """Depth-guided segmentation (the SRFT-GaLore landmark system): the RGB segmenter's image embedding
    fused by cross-attention with depth features, then decoded.

    ``depth_source``: ``depth_anything`` (the encoder of ``depth_model``, frozen unless
    ``depth_adapters`` lists methods for it, which use Depth Anything's target names), ``file`` (a
    depth map per image, ``depth/<stem>`` beside ``images/``, through a small convolutional stem) or
    ``none`` (RGB only, the ablation). ``direction``: who queries whom; ``residual: false`` reproduces
    the release's bare attention output. ``decoder``: ``mask_decoder`` (the segmenter's own, so box,
    point and automatic prompts work) or ``fpn`` (a light convolutional decoder over the RGB encoder's
    FPN levels; prompts are ignored). ``output``: ``sigmoid`` per class, or ``softmax`` over mutually
    exclusive classes and background. The fusion, depth stem and an ``fpn`` decoder always train.
    """

    depth_source: Literal["depth_anything", "file", "none"] = "depth_anything"
    depth_model: str = "depth-anything/Depth-Anything-V2-Small-hf"  # hub id, local dir, .pth or preset
    depth_adapters: list[dict[str, Any]] = Field(default_factory=list)  # methods on the depth encoder
    direction: Literal["depth_queries_rgb", "rgb_queries_depth", "both"] = "depth_queries_rgb"
    heads: int = Field(2, ge=1)
    width: int = Field(256, ge=1)
    residual: bool = True
    decoder: Literal["mask_decoder", "fpn"] = "mask_decoder"
    output: Literal["sigmoid", "softmax"] = "sigmoid"

    @model_validator(mode="after")
    def _check(self) -> DepthGuidedConfig:
        if self.width % self.heads:
            raise ValueError(f"depth_guided.width {self.width} must be divisible by heads {self.heads}")
        try:
            method_configs(self.depth_adapters)
        except ValueError as e:
            raise ValueError(f"depth_{e}") from None
        return self


class ModelConfig(_Strict):
    """Base model and prompt set-up.

    ``backbone``: the model family (``sam``, ``sam2``, ``depth_anything``); by default the family that
    claims ``base`` (its presets, hub ids and saved configs). ``image_size``: by default the backbone's
    (256 for SAM and SAM2, 518 for Depth Anything); checked against the backbone's size rule.
    """

    base: str = "sam-tiny"  # preset name, hub id, local HF directory or original .pth
    backbone: str | None = None
    image_size: int | None = None
    # SAM's attention window: None keeps the base's (ViT-B: 14, so a 16x16 grid at 256 px pads to 28x28);
    # "auto" a window that tiles the token grid without padding; or a number of tokens (windowed
    # blocks' rel_pos tables interpolated to it)
    window_size: int | Literal["auto"] | None = None
    class_prompt: Literal["learned", "text", "none"] = "learned"
    text_encoder: str | None = None  # CLIP hub id or local dir, for class_prompt: text
    text_template: str = "{}"
    depth_guided: DepthGuidedConfig | None = None  # fuse depth features into a SAM / SAM2 segmenter

    @model_validator(mode="after")
    def _backbone_and_size(self) -> ModelConfig:
        from medpeft.backbones import backbone_for

        try:
            backbone = backbone_for(self.base, self.backbone)
        except KeyError as e:
            raise ValueError(f"model.backbone: {e.args[0]}") from None
        except ValueError as e:
            raise ValueError(f"model.base: {e}") from None
        size = backbone.default_image_size if self.image_size is None else self.image_size
        try:
            backbone.check_size(size)
        except ValueError as e:
            raise ValueError(f"model.image_size: {e}") from None
        # resolved in place (an assignment would re-run this validator)
        self.__dict__.update(backbone=backbone.name, image_size=size)
        return self


class SourceConfig(_Strict):
    """One member of a source collection (``data.sources``): a 2D dataset or a 3D volume cut into slices.

    3D datasets: ``dataset`` (MSD / nnU-Net ``dataset.json``, or ``images/`` + ``labels/`` + ``labels.json``;
    label names from its table, ``labels`` selects). 2D: ``root`` (folder or SAM-Med2D layout) with optional ``labels`` (names the single binary label,
    or selects labels). 3D: ``volume`` (NIfTI / DICOM folder; a glob pattern matches several) and
    ``label_map`` (``{dir}`` and ``{stem}`` are replaced by the volume's folder and file stem), with
    ``label_table`` (a labels.json; ``path#key`` picks a nested table such as TotalSegmentator's
    ``labels.json#ct``) and/or ``label_values`` (name -> label values merged into that label, e.g.
    BRATS ``{tumour: [1, 2, 3, 4]}``). Slices are read with nibabel/pydicom and cached as PNG.
    """

    root: Path | None = None
    format: Literal["auto", "folder", "sammed2d"] = "auto"
    labels: list[str] | None = None
    dataset: Path | None = None  # a volume dataset: MSD / nnU-Net dataset.json, or images/ + labels/
    volume: str | None = None
    label_map: str | None = None
    label_table: str | None = None
    label_values: dict[str, list[int]] | None = None
    axis: int = Field(2, ge=0, le=2)
    step: int = Field(1, ge=1)
    window: tuple[float, float] | None = None  # CT (level, width); None: 0.5-99.5 percentile scaling
    min_foreground_pixels: int = Field(50, ge=0)
    max_slices: int | None = Field(None, ge=1)  # per volume, evenly spaced
    repeat: int = Field(1, ge=1)  # oversample a small source this many times in the training split
    split: tuple[float, float, float] | None = None  # this source's own split (e.g. [1, 0, 0]: train only)

    @model_validator(mode="after")
    def _one_kind(self) -> SourceConfig:
        if sum(x is not None for x in (self.root, self.volume, self.dataset)) != 1:
            raise ValueError(
                "a source sets exactly one of 'root' (2D dataset), 'volume' (3D volumes with label_map) or "
                "'dataset' (an MSD / nnU-Net or images/ + labels/ volume dataset)"
            )
        if self.volume is not None:
            if self.label_map is None:
                raise ValueError(f"source volume {self.volume!r} needs 'label_map'")
            if self.label_table is None and self.label_values is None:
                raise ValueError(f"source volume {self.volume!r} needs 'label_table' or 'label_values'")
        return self


class DataConfig(_Strict):
    """Where the images are and how to split and transform them."""

    root: Path | None = None
    format: Literal["auto", "folder", "sammed2d", "landmarks"] = "auto"
    labels: list[str] | None = None
    line_width: int = Field(1, ge=1)  # landmark curves widened to bands this many pixels wide (odd)
    colour_tolerance: float = Field(100.0, gt=0)  # RGB distance of colour-drawn contours (P2ILF)
    resize: Literal["longest_pad", "resize"] = "longest_pad"
    normalize: Literal["auto", "sam", "minmax", "zscore"] = "auto"  # auto: the backbone's (ImageNet: sam)
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_file: Path | None = None
    seed: int = 0
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    cache: bool = True
    spacing: tuple[float, float] | None = None  # pixel size in mm, for ASSD/HD95 in physical units
    sources: list[SourceConfig] | None = None  # a collection of datasets in place of ``root``
    classes_per_image: int | None = Field(None, ge=1)  # train on this many sampled labels per image
    # volumes (3D models): intensity map (CT window preset, (level, width), "zscore"; None: 0.5-99.5
    # percentiles) and the share of training items that are full-resolution crops (SegVol's zoom-in view)
    window: str | tuple[float, float] | None = None
    zoom_in: float = Field(0.5, ge=0.0, le=1.0)

    @field_validator("split")
    @classmethod
    def _fractions(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or not math.isclose(sum(v), 1.0, abs_tol=1e-6):
            raise ValueError(f"data.split must be three non-negative fractions summing to 1, got {list(v)}")
        return v

    @field_validator("line_width")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"must be odd (a band centred on the curve), got {v}")
        return v

    @model_validator(mode="after")
    def _root_or_sources(self) -> DataConfig:
        if self.root is not None and self.sources:
            raise ValueError("set either 'root' (one dataset) or 'sources' (a collection), not both")
        return self


# auto: the class (label-name) token alone; 3D models also take text combinations (text = auto)
PromptMode = Literal["box", "point", "box+point", "auto", "text", "text+box", "text+point", "text+box+point"]


class PromptConfig(_Strict):
    """How prompts are sampled in training and derived at evaluation."""

    train_modes: dict[PromptMode, float] = Field(
        default_factory=lambda: {"box": 0.5, "point": 0.25, "auto": 0.25}
    )
    eval_mode: PromptMode = "box"
    box_jitter: float = Field(0.1, ge=0.0)
    n_pos_points: int = Field(1, ge=0)
    n_neg_points: int = Field(0, ge=0)
    # SAM's interactive training: a share (click_p) of micro-batches first runs 1..click_rounds rounds
    # without gradient, each adding a click at the largest error region and keeping the logits as the
    # next round's mask input; the trained forward then sees those clicks and that mask (SAM, SAM2)
    click_rounds: int = Field(0, ge=0)
    click_p: float = Field(0.5, ge=0.0, le=1.0)

    @field_validator("train_modes")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError(f"prompts.train_modes needs non-negative weights with a positive sum, got {v}")
        return v


class LossConfig(_Strict):
    """Weights of the segmentation loss terms."""

    dice: float = 1.0
    bce: float = 1.0
    focal: float = 0.0
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25


class OptimizerConfig(_Strict):
    """``adamw`` over all trainable tensors, or ``galore_adamw``: GaLore low-rank gradient projection
    (projector ``svd``, ``srft`` or ``gaussian``) on the matrices ``targets`` names (symbolic names the
    backbone maps, default its attention projections, or regexes searched in parameter names),
    plain AdamW on everything else that trains."""

    name: Literal["adamw", "galore_adamw"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    projector: Literal["svd", "srft", "gaussian"] = "srft"
    rank: int = Field(128, ge=1)
    update_gap: int = Field(200, ge=1)
    scale: float = Field(0.25, gt=0)
    proj_side: Literal["auto", "left", "right"] = "auto"
    power_iters: int = Field(0, ge=0)
    targets: list[str] = Field(default_factory=lambda: ["attn"])  # symbolic names or regexes (re.search)


class TrainConfig(_Strict):
    """Training loop settings."""

    output_dir: Path = Path("runs/train")
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)  # optimizer steps; stops early when reached
    batch_size: int = Field(2, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int | None = Field(None, ge=0)  # LoRA-SAM's "preheating"; default: warmup_frac of all steps
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    poly_power: float = 0.9
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    val_every: int = Field(1, ge=1)  # epochs
    checkpoint_every: int | None = Field(None, ge=1)  # optimizer steps; default: every epoch
    log_every: int = Field(10, ge=1)
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    # image embeddings computed once when nothing up to the encoder trains and images are not augmented:
    # auto (in memory when possible), memory, disk ($MEDPEFT_CACHE/embeddings), off
    embedding_cache: Literal["auto", "memory", "disk", "off"] = "auto"
    # recompute the image encoder blocks' activations in the backward pass instead of keeping them
    gradient_checkpointing: bool = False
    # several processes: ddp (every process holds the whole model) or fsdp (weights, gradients and
    # optimizer state sharded over the processes, one unit per encoder block: for the largest backbones)
    distributed: Literal["ddp", "fsdp"] = "ddp"
    cpu: bool = False  # force CPU even when a GPU is present


class DepthConfig(_Strict):
    """The depth task: how depth files are stored and which loss trains.

    ``scale``: units per stored value (16-bit PNGs in millimetres: 0.001 gives metres). ``loss``:
    ``auto`` is the scale-and-shift-invariant loss on disparity for relative models and SILog on depth
    for metric ones. ``align`` (evaluation): ``auto`` is ``scale_shift`` for relative models (least-squares
    scale and shift of the disparity, as MiDaS and Depth Anything evaluate affine-invariant output) and
    ``none`` for metric ones; ``median`` inverts the disparity and median-scales the depth (Monodepth2).
    ``min_depth``/``max_depth``: the evaluation range (None: the whole range).
    """

    scale: float = Field(0.001, gt=0)
    loss: Literal["auto", "ssi", "silog"] = "auto"
    align: Literal["auto", "scale_shift", "median", "none"] = "auto"
    silog_lambda: float = Field(0.5, ge=0, le=1)  # Depth Anything V2 metric training uses 0.5
    min_depth: float = Field(1e-3, gt=0)
    max_depth: float | None = Field(None, gt=0)


class SelfSupConfig(_Strict):
    """Self-supervised depth from video (``task: selfsup_depth``; monodepth2 with DARES's choices).

    ``offsets``: source frames relative to the target. ``photometric``: ``ms_ssim`` (DARES: ``alpha``
    0.9 on 1 - MS-SSIM) or ``ssim`` (monodepth2: ``alpha`` 0.85 on (1 - SSIM) / 2); the rest is L1.
    ``smoothness``: edge-aware smoothness weight (divided by 2^scale). ``automask``: drop pixels the
    unwarped source explains better. ``scales``: disparity scales (the DPT neck's levels), each scored
    at full resolution and averaged. ``min_depth``/``max_depth``: the range disparity maps to (DARES:
    0.1-150). ``image_width``: frames are ``model.image_size`` high and this wide (multiples of 14;
    default square). ``pose_encoder``: the pose network's ResNet (MONAI); ``pose_lr``: its learning
    rate (default ``train.lr``).
    """

    offsets: list[int] = Field(default_factory=lambda: [-1, 1])
    photometric: Literal["ms_ssim", "ssim"] = "ms_ssim"
    alpha: float | None = Field(None, ge=0, le=1)  # default: 0.9 for ms_ssim, 0.85 for ssim
    smoothness: float = Field(1e-3, ge=0)
    automask: bool = True
    scales: int = Field(4, ge=1, le=4)
    min_depth: float = Field(0.1, gt=0)
    max_depth: float = Field(150.0, gt=0)
    image_width: int | None = Field(None, ge=14)
    pose_encoder: Literal["resnet18", "resnet10", "tiny"] = "resnet18"
    pose_lr: float | None = Field(None, gt=0)

    @field_validator("offsets")
    @classmethod
    def _offsets(cls, v: list[int]) -> list[int]:
        if not v or 0 in v or len(set(v)) != len(v):
            raise ValueError(f"must be distinct non-zero frame offsets, got {v}")
        return v

    @model_validator(mode="after")
    def _range(self) -> SelfSupConfig:
        if self.min_depth >= self.max_depth:
            raise ValueError(f"min_depth {self.min_depth} must be below max_depth {self.max_depth}")
        if self.image_width is not None and self.image_width % 14:
            raise ValueError(f"image_width must be a multiple of 14, got {self.image_width}")
        return self

    @property
    def weight(self) -> float:
        """The SSIM term's weight ``alpha`` (the paper's default for the chosen error)."""
        return self.alpha if self.alpha is not None else (0.9 if self.photometric == "ms_ssim" else 0.85)


class EvalConfig(_Strict):
    """Evaluation settings."""

    empty_score: Literal["one", "nan"] = "one"  # Dice/IoU when both prediction and mask are empty
    threshold: float = Field(0.5, gt=0, lt=1)
    surface_metrics: bool = True


class Config(_Strict):
    """A whole run."""

    task: str | None = None  # segmentation or depth; default: the backbone's task
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    prompts: PromptConfig = Field(default_factory=PromptConfig)
    adapters: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"name": "lora", "r": 4}, {"name": "decoder"}]
    )
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    depth: DepthConfig = Field(default_factory=DepthConfig)
    selfsup: SelfSupConfig = Field(default_factory=SelfSupConfig)

    @model_validator(mode="after")
    def _check_adapters(self) -> Config:
        from medpeft.backbones import get_backbone
        from medpeft.tasks.base import TASK_NAMES

        method_configs(self.adapters)
        if self.task is not None and self.task not in TASK_NAMES:
            raise ValueError(f"task: {self.task!r} is not one of: {', '.join(TASK_NAMES)}")
        backbone = get_backbone(str(self.model.backbone))
        native = backbone.task
        if self.task is not None and self.task in backbone.other_tasks:
            native = self.task
        if self.task is not None and self.task != native:
            raise ValueError(
                f"task: {self.task!r} does not fit backbone {self.model.backbone!r} (a {native} model)"
            )
        self.__dict__["task"] = native
        if native == "selfsup_depth" and "adapters" not in self.model_fields_set:
            self.__dict__["adapters"] = list(DARES_ADAPTERS)  # DARES: Vector-LoRA on q and v, DPT head
        if self.data.normalize == "auto":
            self.data.__dict__["normalize"] = backbone.normalize
        if self.model.depth_guided is not None:
            if native != "segmentation" or backbone.name not in ("sam", "sam2"):
                raise ValueError(
                    f"model.depth_guided: fuses depth into a SAM or SAM2 segmenter, not {backbone.name!r}"
                )
            if self.model.depth_guided.output == "softmax" and self.data.classes_per_image is not None:
                raise ValueError(
                    "model.depth_guided.output: softmax needs every class in every item; unset "
                    "data.classes_per_image"
                )
        if self.train.distributed == "fsdp" and self.optimizer.name == "galore_adamw":
            raise ValueError(
                "train.distributed: fsdp shards each weight matrix over the processes, but GaLore projects "
                "whole matrices; use ddp with optimizer.name galore_adamw"
            )
        if native in ("depth", "selfsup_depth") and self.data.normalize != "sam":
            raise ValueError(
                f"data.normalize: depth models take ImageNet statistics ('sam'), got {self.data.normalize!r}"
            )
        return self


DARES_ADAPTERS: tuple[dict[str, Any], ...] = (
    {"name": "vector_lora", "schedule": "dares", "r_max": 14, "r_min": 8, "targets": "qv"},
    {"name": "decoder"},
)


def method_configs(adapters: list[dict[str, Any]]) -> list[tuple[str, BaseModel]]:
    """Validate each ``adapters`` entry against its method's config class."""
    out = []
    for i, entry in enumerate(adapters):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"adapters[{i}] must be a mapping with a 'name' key, got {entry!r}")
        params = {k: v for k, v in entry.items() if k != "name"}
        try:
            method = get_method(str(entry["name"]))
        except KeyError as e:
            raise ValueError(f"adapters[{i}]: {e.args[0]}") from None
        try:
            out.append((method.name, method.config_cls(**params)))
        except ValidationError as e:
            valid = ", ".join(sorted(method.config_cls.model_fields, key=lambda k: k == "lr"))
            raise ValueError(
                f"adapters[{i}] ({method.name}): {_first_error(e)}; valid keys: {valid}"
            ) from None
    return out


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc!r}"
    return f"{loc}: {err['msg']}"


def _valid_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if isinstance(part, int):  # a list item: the list's element model was taken already
            continue
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        for arg in typing.get_args(annotation):  # list[X] | None -> X
            inner = typing.get_args(arg) or (arg,)
            if isinstance(inner[0], type) and issubclass(inner[0], BaseModel):
                annotation = inner[0]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def parse_config(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a config mapping, turning pydantic errors into one actionable line."""
    try:
        return Config(**(data or {}))
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(loc)
            raise ConfigError(
                f"{source}: unknown config key {key!r}; valid keys here: {', '.join(valid)}"
            ) from None
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{source}: {key}: {msg}" if key else f"{source}: {msg}") from None


REMOVED_KEYS = (("model", "fallback_preset"),)  # keys older versions recorded that no longer exist


def parse_recorded_config(data: dict[str, Any], source: str = "config") -> Config:
    """A config stored in a checkpoint record, written by this or an older medpeft (removed keys dropped)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in (data or {}).items()}
    for section, key in REMOVED_KEYS:
        if isinstance(data.get(section), dict):
            data[section].pop(key, None)
    return parse_config(data, source)


def set_key(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a config mapping."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. train.lr=3e-4), got {assignment!r}")
    key, _, raw = assignment.partition("=")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"--set {key}: the value {raw!r} is not valid YAML ({first})") from None
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
    node[parts[-1]] = value


def load_config(path: Path | str | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        source = str(path)
    for assignment in overrides or []:
        set_key(data, assignment)
    return parse_config(data, source)


def dump_config(cfg: Config) -> dict[str, Any]:
    """A plain, YAML-friendly mapping of the config."""
    return cfg.model_dump(mode="json")
