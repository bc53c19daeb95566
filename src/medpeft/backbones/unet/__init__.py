"""A MONAI U-Net trained from scratch: the non-foundation baseline of the transfer benchmark.

MONAI provides the network; the small loop here exists because :func:`medpeft.engine.trainer.train`
builds SAM models. It uses the same loss, data pipeline, validation Dice and best-on-validation
selection as the SAM trainer, so the comparison differs only in the model.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from monai.networks.nets import UNet
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medpeft.config import LossConfig
from medpeft.data.dataset import SegmentationDataset
from medpeft.engine.schedule import build_scheduler
from medpeft.models.prompts import Prompts
from medpeft.tasks.segmentation_eval import validate
from medpeft.tasks.segmentation_loss import SegmentationLoss


class UNetSegmenter(nn.Module):
    """MONAI's 2D residual U-Net with the segmenter interface (prompts are accepted and ignored)."""

    def __init__(self, label_names: list[str], channels: tuple[int, ...] = (16, 32, 64, 128, 256)):
        super().__init__()
        self.label_names = list(label_names)
        self.net = UNet(
            spatial_dims=2,
            in_channels=3,
            out_channels=len(label_names),
            channels=channels,
            strides=(2,) * (len(channels) - 1),
            num_res_units=2,
        )

    def forward(self, images: torch.Tensor, prompts: Prompts | None = None) -> torch.Tensor:
        """Per-class logits [B, C, H, W]; H and W must be multiples of 2 ** (levels - 1)."""
        return self.net(images)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


@dataclass
class UNetResult:
    """The best-on-validation model and its training history."""

    model: UNetSegmenter
    best_val_dice: float
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)


def train_unet(
    train_ds: SegmentationDataset,
    val_ds: SegmentationDataset | None,
    epochs: int,
    batch_size: int = 4,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    val_every: int = 1,
    loss: LossConfig | None = None,
    progress: bool = True,
) -> UNetResult:
    """Train a U-Net (AdamW, 10% warm-up then cosine) and keep the weights of the best validation Dice."""
    torch.manual_seed(seed)
    model = UNetSegmenter(train_ds.label_names)
    loss_fn = SegmentationLoss(loss or LossConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * math.ceil(len(train_ds) / batch_size)
    scheduler = build_scheduler(optimizer, total, int(0.1 * total), "cosine", 0.9, 0.0)
    best, best_state, history, step = -1.0, copy.deepcopy(model.state_dict()), [], 0
    bar = tqdm(total=total, desc="unet", unit="step", disable=not progress)
    for epoch in range(epochs):
        model.train()
        train_ds.set_epoch(epoch)
        loader = DataLoader(
            train_ds,
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed * 7919 + epoch),
        )
        for batch in loader:
            logits = model(batch["image"])
            value, _ = loss_fn(logits, batch["masks"], batch.get("class_valid"))
            if not torch.isfinite(value):
                raise FloatingPointError(
                    f"U-Net loss became {float(value)} at step {step}; lower the learning rate"
                )
            optimizer.zero_grad()
            value.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            history.append({"step": step, "epoch": epoch, "loss": float(value.detach())})
            bar.update(1)
        if val_ds is not None and ((epoch + 1) % val_every == 0 or epoch + 1 == epochs):
            dice = validate(model, val_ds, "auto", batch_size)  # type: ignore[arg-type]
            history.append({"step": step, "epoch": epoch + 1, "val_dice": dice})
            if dice > best:
                best, best_state = dice, copy.deepcopy(model.state_dict())
    bar.close()
    if val_ds is None:
        best_state = model.state_dict()
    model.load_state_dict(best_state)
    model.eval()
    return UNetResult(model, best, step, history)
