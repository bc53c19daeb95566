"""The main job on bundled data (``make demo``): fine-tune, evaluate held-out slices, write pictures."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from medpeft.config import load_config
from medpeft.data.readers import DataError
from medpeft.engine.build import build_dataset, build_splits
from medpeft.engine.evaluate import evaluate, format_table
from medpeft.engine.restore import load_trained
from medpeft.engine.trainer import train


def demo_config_path() -> Path:
    return Path(str(resources.files("medpeft") / "presets" / "demo.yaml"))


def run_demo(output: Path, data: Path, overrides: list[str], overwrite: bool = False) -> dict[str, Any]:
    """Train LoRA-SAM on the demo CT slices and evaluate with box prompts and in automatic mode.

    ``overwrite`` replaces an earlier demo run (only a folder medpeft made: see ``engine.rundir``).
    """
    if not data.exists():
        raise DataError(f"demo data {data} not found; run from the repository root (make demo)")
    cfg = load_config(demo_config_path(), [f"data.root={data}", f"train.output_dir={output}", *overrides])
    result = train(cfg, overwrite=overwrite)
    model, record, cfg = load_trained(result.run_dir)
    splits = build_splits(cfg)
    dataset = build_dataset(cfg, splits.test, record["label_names"], train=False)
    summary: dict[str, Any] = {
        "base_model": record["base_model"],
        "train_steps": result.steps,
        "best_val_dice": result.best_dice,
    }
    for mode in ("box", "auto"):
        s = evaluate(model, dataset, mode, output / f"eval-test-{mode}", spacing=cfg.data.spacing)
        print(format_table(s))
        summary[f"test_dice_{mode}"] = s["mean"]["dice"]
    base = record["base_model"]
    if base.get("random_init"):
        summary["note"] = (
            f"RANDOM-INIT base ({base['source']}, fallback from {base.get('fallback_from')}); "
            "these numbers are not those of a pretrained SAM"
        )
    summary["pictures"] = [str(output / "curves.png"), str(output / "eval-test-box" / "overlays")]
    return summary
