"""A MONAI U-Net trained from scratch: the non-foundation baseline, registered as a backbone so that it
trains through the one training loop (``model.base: unet``, ``adapters: [{name: full}]``); ``unet3d``
is its volume form (backbone ``unet3d``, task ``volume_segmentation``, input 32 x S x S, one channel).

MONAI provides the network. It takes no prompts (it always predicts every class, as automatic mode);
its weights depend on the label count, so the "base" a U-Net loads is its architecture only.
"""

from __future__ import annotations

import torch
from monai.networks.nets import UNet
from torch import nn

from medpeft.backbones.hub import check_multiple
from medpeft.backbones.identity import BaseIdentity
from medpeft.backbones.registry import Backbone, register_backbone
from medpeft.models.prompts import Prompts

PRESETS: dict[str, tuple[int, ...]] = {"unet": (16, 32, 64, 128, 256), "unet-small": (8, 16, 32, 64)}
PRESETS_3D: dict[str, tuple[int, ...]] = {"unet3d": (16, 32, 64, 128), "unet3d-small": (8, 16, 32, 64)}
DEPTH_3D = 32  # input depth of the 3D U-Net (SegVol-mini's), in-plane ``model.image_size``


class UNetArchitecture(nn.Module):
    """The U-Net's channels per level: what ``model.base`` names (no weights until the labels are known)."""

    def __init__(self, channels: tuple[int, ...], image_size: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.channels, self.image_size, self.spatial_dims = tuple(channels), image_size, spatial_dims


class UNetSegmenter(nn.Module):
    """MONAI's residual U-Net (2D on RGB images, 3D on one-channel volumes) with the segmenter interface
    (prompts are accepted and ignored)."""

    target_table: dict[str, str] = {}

    def __init__(
        self,
        label_names: list[str],
        channels: tuple[int, ...] = PRESETS["unet"],
        image_size: int = 256,
        spatial_dims: int = 2,
    ):
        super().__init__()
        self.label_names = list(label_names)
        self.image_size = image_size
        self.spatial_dims = spatial_dims
        self.backbone_name = "unet" if spatial_dims == 2 else "unet3d"
        self.roi = (DEPTH_3D, image_size, image_size)
        self.class_prompt = None
        self.net = UNet(
            spatial_dims=spatial_dims,
            in_channels=3 if spatial_dims == 2 else 1,
            out_channels=len(label_names),
            channels=channels,
            strides=(2,) * (len(channels) - 1),
            num_res_units=2,
        )

    def forward(self, images: torch.Tensor, prompts: Prompts | None = None) -> torch.Tensor:
        """Per-class logits [B, C, H, W] (3D: [B, C, D, H, W]); sizes multiples of 2 ** (levels - 1)."""
        return self.net(images)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def load_unet(source: str, image_size: int = 256) -> tuple[UNetArchitecture, BaseIdentity]:
    """The U-Net preset ``source``, 2D or 3D by name (no pretrained U-Net exists: it trains from scratch)."""
    volume = source in PRESETS_3D
    presets = PRESETS_3D if volume else PRESETS
    if source not in presets:
        raise ValueError(f"unknown U-Net {source!r}; valid: {', '.join([*PRESETS, *PRESETS_3D])}")
    arch = UNetArchitecture(presets[source], image_size, spatial_dims=3 if volume else 2)
    check_multiple(image_size, 2 ** (len(arch.channels) - 1), "this U-Net")
    return arch, BaseIdentity.of(arch, source, "preset", image_size, "unet3d" if volume else "unet")


def _wrap(
    base: UNetArchitecture, label_names: list[str], class_prompt: nn.Module | None = None
) -> UNetSegmenter:
    return UNetSegmenter(label_names, base.channels, base.image_size, base.spatial_dims)


UNET = register_backbone(
    Backbone(
        name="unet",
        task="segmentation",
        load=load_unet,
        wrap=_wrap,
        check_size=lambda size: check_multiple(size, 16, "the U-Net"),
        claims=lambda source: source in PRESETS,
        targets={},
        default_image_size=256,
        presets=tuple(PRESETS),
    )
)

UNET3D = register_backbone(
    Backbone(
        name="unet3d",
        task="volume_segmentation",
        load=load_unet,
        wrap=_wrap,
        check_size=lambda size: check_multiple(size, 16, "the 3D U-Net"),
        claims=lambda source: source in PRESETS_3D,
        targets={},
        default_image_size=64,
        presets=tuple(PRESETS_3D),
        normalize="minmax",
        input_shape=lambda source, size: (DEPTH_3D, size, size),
    )
)

__all__ = ["UNET", "UNET3D", "UNetSegmenter", "load_unet"]
