"""Integration: a few training steps on the real 2D datasets in ../shared/data (skipped when absent)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import shared_data
from medpeft.config import parse_config
from medpeft.engine.trainer import train


@pytest.mark.shared
@pytest.mark.parametrize("name", ["kvasir-seg", "sam-med2d-demo"])
def test_few_training_steps_on_real_data(name: str, tmp_path: Path) -> None:
    root = shared_data(name)
    cfg = parse_config(
        {
            "model": {"base": "sam-tiny", "image_size": 64},
            "data": {
                "root": str(root),
                "split": [0.5, 0.25, 0.25] if name == "sam-med2d-demo" else [0.8, 0.1, 0.1],
            },
            "adapters": [{"name": "lora", "r": 2}, {"name": "decoder"}],
            "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 2, "log_every": 1},
        }
    )
    result = train(cfg, progress=False)
    assert result.steps == 2
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    record = (result.run_dir / "best.json").read_text()
    assert "step-000002" in record
