"""Memory savers in the training loop: gradient checkpointing follows the same losses; a device without
the requested mixed precision is one line."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import make_shapes_dataset, tiny_config_dict
from medpeft.config import parse_config
from medpeft.engine.trainer import check_mixed_precision, train


def test_gradient_checkpointing_trains_the_same(tmp_path: Path, capsys) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", n=8)
    losses = []
    for on in (False, True):
        raw = tiny_config_dict(data, tmp_path / f"run{on}", epochs=2, batch_size=4)
        raw["train"]["gradient_checkpointing"] = on
        train(parse_config(raw), progress=False)
        rows = csv.DictReader((tmp_path / f"run{on}" / "log.csv").open())
        losses.append([float(r["loss"]) for r in rows if r.get("loss")])
    assert "gradient checkpointing: 2 encoder blocks" in capsys.readouterr().out
    assert len(losses[0]) == len(losses[1]) >= 2
    assert max(abs(a - b) for a, b in zip(*losses, strict=True)) < 1e-5, losses


def test_mixed_precision_the_device_lacks_is_one_line(monkeypatch) -> None:
    check_mixed_precision("bf16", cpu=False)  # this CPU machine: accelerate's CPU autocast
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-16GB")
    with pytest.raises(ValueError, match="V100.*no bfloat16 support; use fp16"):
        check_mixed_precision("bf16", cpu=False)
    check_mixed_precision("fp16", cpu=False)
    check_mixed_precision("bf16", cpu=True)  # forced to the CPU: fine
