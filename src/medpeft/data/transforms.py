"""Resizing, intensity normalisation and augmentation of (image [H,W,3], masks [C,H,W]) pairs.

Images are uint8 (or float) [H, W, 3]; masks are bool [C, H, W]. Every geometric operation is
applied identically to the image and its masks (bilinear for the image, nearest for the masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

# SAM's pixel_mean / pixel_std (ImageNet statistics on the 0-255 scale).
SAM_PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
SAM_PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
RESIZE_MODES = ("longest_pad", "resize")
NORMALIZE_MODES = ("sam", "minmax", "zscore", "none")

# ----------------------------------------------------------------------------- resizing


@dataclass(frozen=True)
class ResizeGeometry:
    """How an (h, w) image became the ``input_size`` square model input: resized to ``resized_size``
    (then zero-padded at the bottom and right for ``longest_pad``); what maps predictions back."""

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    input_size: int
    resize: str


def resize_meta(original_size: tuple[int, int], size: int, mode: str = "longest_pad") -> ResizeGeometry:
    """Geometry of resizing an (h, w) image to the ``size`` x ``size`` model input."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    h, w = int(original_size[0]), int(original_size[1])
    if mode == "longest_pad":
        scale = size / max(h, w)
        resized = (int(h * scale + 0.5), int(w * scale + 0.5))  # as SAM's ResizeLongestSide
    else:
        resized = (size, size)
    return ResizeGeometry((h, w), resized, size, mode)


def _resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == hw:
        return image.copy()
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(t, size=hw, mode="bilinear", align_corners=False, antialias=True)[0]
    arr = out.permute(1, 2, 0).numpy()
    if image.dtype == np.uint8:
        return np.clip(np.round(arr), 0, 255).astype(np.uint8)
    return arr.astype(image.dtype, copy=False)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for pixel-centre nearest-neighbour resizing."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def _resize_nearest(masks: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    rows, cols = _nearest_index(masks.shape[-2], hw[0]), _nearest_index(masks.shape[-1], hw[1])
    return masks[..., rows, :][..., cols]


def _pad(arr: np.ndarray, size: int, axes: tuple[int, int]) -> np.ndarray:
    pad = [(0, 0)] * arr.ndim
    pad[axes[0]] = (0, size - arr.shape[axes[0]])
    pad[axes[1]] = (0, size - arr.shape[axes[1]])
    return np.pad(arr, pad)


def resize_longest_pad(
    image: np.ndarray, masks: np.ndarray | None, size: int
) -> tuple[np.ndarray, np.ndarray | None, ResizeGeometry]:
    """SAM's resize: longest side to ``size`` (image bilinear, masks nearest), zero-pad bottom/right."""
    meta = resize_meta(image.shape[:2], size, "longest_pad")
    hw = meta.resized_size
    out_img = _pad(_resize_image(image, hw), size, (0, 1))
    out_masks = None if masks is None else _pad(_resize_nearest(masks, hw), size, (-2, -1))
    return out_img, out_masks, meta


def resize_plain(
    image: np.ndarray, masks: np.ndarray | None, size: int
) -> tuple[np.ndarray, np.ndarray | None, ResizeGeometry]:
    """Resize to ``size`` x ``size`` ignoring the aspect ratio."""
    meta = resize_meta(image.shape[:2], size, "resize")
    out_masks = None if masks is None else _resize_nearest(masks, (size, size))
    return _resize_image(image, (size, size)), out_masks, meta


def resize(
    image: np.ndarray, masks: np.ndarray | None, size: int, mode: str = "longest_pad"
) -> tuple[np.ndarray, np.ndarray | None, ResizeGeometry]:
    """Dispatch to :func:`resize_longest_pad` or :func:`resize_plain`."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    return (resize_longest_pad if mode == "longest_pad" else resize_plain)(image, masks, size)


def valid_region(meta: ResizeGeometry) -> np.ndarray:
    """bool [S, S]: True on image pixels, False on padding."""
    size = meta.input_size
    out = np.zeros((size, size), bool)
    out[: meta.resized_size[0], : meta.resized_size[1]] = True
    return out


def undo_resize(
    pred: np.ndarray | torch.Tensor, meta: ResizeGeometry, mode: str = "bilinear"
) -> np.ndarray | torch.Tensor:
    """Map a prediction [..., S, S] back to the original image size: crop the padding, resize.

    ``mode`` is ``"bilinear"`` for logits/probabilities or ``"nearest"`` for masks / label maps.
    Returns the same type (numpy or torch) as ``pred``.
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"unknown mode {mode!r}; expected 'bilinear' or 'nearest'")
    rh, rw = meta.resized_size
    hw = tuple(meta.original_size)
    cropped = pred[..., :rh, :rw]
    if mode == "nearest":
        rows, cols = _nearest_index(rh, hw[0]), _nearest_index(rw, hw[1])
        if isinstance(cropped, torch.Tensor):
            idx_r = torch.from_numpy(rows).to(cropped.device)
            idx_c = torch.from_numpy(cols).to(cropped.device)
            return cropped.index_select(-2, idx_r).index_select(-1, idx_c)
        return cropped[..., rows, :][..., cols]
    is_np = not isinstance(cropped, torch.Tensor)
    t = torch.from_numpy(np.asarray(cropped, dtype=np.float32)) if is_np else cropped
    lead = t.shape[:-2]
    t = t.reshape(1, -1, rh, rw)
    if not t.is_floating_point():
        t = t.float()
    out = F.interpolate(t, size=hw, mode="bilinear", align_corners=False).reshape(*lead, *hw)
    return out.numpy() if is_np else out


# ----------------------------------------------------------------------------- normalisation


def normalize(image: np.ndarray, mode: str = "sam") -> np.ndarray:
    """float32 [H, W, 3] from a 0-255 image.

    ``sam``: (x - SAM pixel_mean) / pixel_std; ``minmax``: to [0, 1] per image; ``zscore``: zero mean,
    unit std per image; ``none``: cast only.
    """
    x = np.asarray(image, np.float32)
    if mode == "sam":
        return (x - SAM_PIXEL_MEAN) / SAM_PIXEL_STD
    if mode == "minmax":
        lo, hi = float(x.min()), float(x.max())
        return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    if mode == "zscore":
        std = float(x.std())
        return (x - float(x.mean())) / std if std > 0 else np.zeros_like(x)
    if mode == "none":
        return x
    raise ValueError(f"unknown normalize mode {mode!r}; expected one of {NORMALIZE_MODES}")


# ----------------------------------------------------------------------------- augmentation


class AugmentConfig(BaseModel):
    """Probabilities (``*_p``) and strengths of each augmentation (the config's ``data.augment``).

    Left/right flips swap anatomy: keep ``hflip_p`` at 0 for labels such as ``kidney_left``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    hflip_p: float = Field(0.5, ge=0, le=1)
    vflip_p: float = Field(0.0, ge=0, le=1)
    rot90_p: float = Field(0.0, ge=0, le=1)
    rotate_p: float = Field(0.0, ge=0, le=1)
    rotate_max_deg: float = 15.0
    brightness_p: float = Field(0.3, ge=0, le=1)
    brightness_max: float = 0.1  # additive shift, fraction of the 0-255 range
    contrast_p: float = Field(0.3, ge=0, le=1)
    contrast_max: float = 0.2  # factor in [1 - c, 1 + c] around the mean
    gamma_p: float = Field(0.0, ge=0, le=1)
    gamma_max: float = 0.2  # exponent in [1 / (1 + g), 1 + g]

    @classmethod
    def from_dict(cls, cfg: dict[str, Any] | AugmentConfig | None) -> AugmentConfig:
        """Build from a dict; unknown keys are an error naming the valid ones.

        Short names are accepted too: ``hflip``, ``vflip``, ``rot90``, ``rotate``, ``brightness``,
        ``contrast``, ``gamma`` for their ``*_p`` probability, and ``intensity`` for all three
        intensity probabilities.
        """
        if isinstance(cfg, AugmentConfig):
            return cfg
        names = list(cls.model_fields)
        kwargs: dict[str, Any] = {}
        for key, value in (cfg or {}).items():
            if key == "intensity":
                for name in ("brightness_p", "contrast_p", "gamma_p"):
                    kwargs.setdefault(name, value)
            elif f"{key}_p" in names:
                kwargs[f"{key}_p"] = value
            elif key in names:
                kwargs[key] = value
            else:
                raise ValueError(f"unknown augmentation option {key!r}; valid: {names} (or 'intensity')")
        return cls(**kwargs)


def flip(image: np.ndarray, masks: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip along image axis 0 (vertical) or 1 (horizontal)."""
    return np.flip(image, axis), np.flip(masks, axis + 1)


def rot90(image: np.ndarray, masks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by ``k`` quarter turns (counter-clockwise)."""
    return np.rot90(image, k, axes=(0, 1)), np.rot90(masks, k, axes=(1, 2))


def rotate(image: np.ndarray, masks: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate about the centre by ``angle_deg`` keeping the size; corners are filled with zeros. ``masks``
    [K, H, W] are boolean, or float maps resampled by nearest neighbour."""
    img = ndimage.rotate(image.astype(np.float32), angle_deg, axes=(1, 0), reshape=False, order=1)
    if image.dtype == np.uint8:
        img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if masks.dtype == bool:
        m = ndimage.rotate(masks.astype(np.uint8), angle_deg, axes=(2, 1), reshape=False, order=0) > 0
    else:  # float maps (e.g. depth) stacked with the masks: nearest, so 0 = invalid stays unmixed
        m = ndimage.rotate(masks, angle_deg, axes=(2, 1), reshape=False, order=0)
    return img, m


def adjust_intensity(
    image: np.ndarray, brightness: float = 0.0, contrast: float = 1.0, gamma: float = 1.0
) -> np.ndarray:
    """Contrast (around the mean), brightness (fraction of 255) then gamma, on a 0-255 image."""
    x = image.astype(np.float32) / 255.0
    x = (x - x.mean()) * contrast + x.mean() + brightness
    x = np.clip(x, 0.0, 1.0) ** gamma
    out = x * 255.0
    return np.clip(np.round(out), 0, 255).astype(np.uint8) if image.dtype == np.uint8 else out


def augment(
    image: np.ndarray,
    masks: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig | dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly flip / rotate (image and masks alike) and jitter the intensity (image only)."""
    cfg = AugmentConfig.from_dict(config)
    if rng.random() < cfg.hflip_p:
        image, masks = flip(image, masks, 1)
    if rng.random() < cfg.vflip_p:
        image, masks = flip(image, masks, 0)
    if rng.random() < cfg.rot90_p:
        image, masks = rot90(image, masks, int(rng.integers(1, 4)))
    if rng.random() < cfg.rotate_p:
        image, masks = rotate(image, masks, float(rng.uniform(-cfg.rotate_max_deg, cfg.rotate_max_deg)))
    b = (
        float(rng.uniform(-cfg.brightness_max, cfg.brightness_max))
        if rng.random() < cfg.brightness_p
        else 0.0
    )
    c = (
        float(rng.uniform(1 - cfg.contrast_max, 1 + cfg.contrast_max))
        if rng.random() < cfg.contrast_p
        else 1.0
    )
    g = 1.0
    if rng.random() < cfg.gamma_p:
        g = float(np.exp(rng.uniform(-np.log1p(cfg.gamma_max), np.log1p(cfg.gamma_max))))
    if (b, c, g) != (0.0, 1.0, 1.0):
        image = adjust_intensity(image, b, c, g)
    return np.ascontiguousarray(image), np.ascontiguousarray(masks)


def model_input(
    image: np.ndarray, size: int, resize_mode: str, normalize_mode: str
) -> tuple[torch.Tensor, ResizeGeometry]:
    """An image as the model's [1, 3, S, S] input (padding zeroed after normalisation) and its resize record."""
    resized, _, meta = resize(image, None, size, resize_mode)
    x = normalize(resized, normalize_mode)
    x[~valid_region(meta)] = 0.0
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None], meta
