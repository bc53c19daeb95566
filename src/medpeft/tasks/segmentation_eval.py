"""Validation during training: mean Dice at the model's input resolution."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medpeft.metrics import dice_per_class
from medpeft.models.prompts import Prompts


@torch.no_grad()
def predict_batches(model: nn.Module, dataset: Dataset, mode: str, batch_size: int):
    """Yield (batch, logits) over a dataset with deterministic prompts of one mode."""
    was_training = model.training
    model.eval()
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            batch = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            yield batch, model(batch["image"], Prompts.from_batch(batch, mode))
    finally:
        model.train(was_training)


def validate(model: nn.Module, dataset: Dataset, mode: str, batch_size: int = 2) -> float:
    """Mean Dice over images and classes (empty prediction on empty mask counts as 1)."""
    scores = []
    for batch, logits in predict_batches(model, dataset, mode, batch_size):
        dice = dice_per_class(logits > 0, batch["masks"] > 0.5)
        if "class_valid" in batch:  # labels an image is not annotated for are not scored
            dice = torch.where(batch["class_valid"].to(dice.device), dice, torch.nan)
        scores.append(dice)
    return float(torch.cat(scores).nanmean())
