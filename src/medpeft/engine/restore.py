"""Rebuild a fine-tuned model from an adapter checkpoint: base model + methods + trained tensors."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from medpeft.config import Config, parse_recorded_config
from medpeft.engine import checkpoint as ckpt
from medpeft.engine.build import build_model
from medpeft.engine.record import AdapterRecord


def load_trained(path: Path | str, base: str | None = None) -> tuple[nn.Module, AdapterRecord, Config]:
    """Load a checkpoint directory (or a run directory's best checkpoint) onto its base model.

    ``base`` overrides where the base weights come from (e.g. a local copy of a hub model); their hash
    must still match the recorded one, so the result reproduces the fine-tuned model bit for bit.
    """
    directory = ckpt.resolve_checkpoint(path)
    record = ckpt.read_record(directory)
    cfg = parse_recorded_config(record.config, source=str(directory / ckpt.RECORD_FILE))
    cfg.model.base = base or record.base_model.source
    model, _ = build_model(
        cfg, record.label_names, expected=record.base_model, expected_depth=record.depth_model
    )
    ckpt.load_adapter_tensors(model, directory, record)
    model.eval()
    return model, record, cfg
