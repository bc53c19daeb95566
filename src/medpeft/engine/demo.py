"""The main job on bundled data (``make demo``): zero-shot, fine-tune, evaluate held-out slices, report."""

from __future__ import annotations

import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from medpeft.config import load_config
from medpeft.data.io import DataError
from medpeft.engine.build import build_model
from medpeft.engine.html_report import write_report
from medpeft.engine.restore import load_trained
from medpeft.engine.rundir import check_replaceable, data_paths
from medpeft.engine.trainer import train
from medpeft.tasks.segmentation import build_dataset, build_splits
from medpeft.tasks.segmentation_eval import evaluate, format_table

MODES = ("box", "auto")


def demo_config_path() -> Path:
    return Path(str(resources.files("medpeft") / "presets" / "demo.yaml"))


def run_demo(
    output: Path, data: Path, overrides: list[str], overwrite: bool = False, base: str | None = None
) -> dict[str, Any]:
    """Adapt a foundation to the demo CT slices: zero-shot scores, LoRA-SAM training, fine-tuned scores, report.

    The default base is the bundled ``sam-mini-med`` (never trained on CT); ``base`` takes any other
    (a hub id when the hub answers). ``overwrite`` replaces an earlier demo run (only a folder medpeft
    made: see ``engine.rundir``).
    """
    if not data.exists():
        raise DataError(f"demo data {data} not found; run from the repository root (make demo)")
    extra = [f"model.base={base}"] if base else []
    cfg = load_config(
        demo_config_path(), [f"data.root={data}", f"train.output_dir={output}", *extra, *overrides]
    )
    splits = build_splits(cfg)
    check_replaceable(output, overwrite, data_paths(cfg))  # before minutes of zero-shot evaluation
    base_model, identity = build_model(cfg, splits.label_names)
    dataset = build_dataset(cfg, splits.test, splits.label_names, train=False)
    print(
        f"[medpeft] demo base: {identity.source} ({identity.kind}); zero-shot on {len(dataset)} test slices"
    )
    summary: dict[str, Any] = {"base_model": identity.source, "base_kind": identity.kind}
    with tempfile.TemporaryDirectory(prefix="medpeft-demo-") as tmp:  # the run folder does not exist yet
        staging = Path(tmp)
        for mode in MODES:
            s = evaluate(base_model, dataset, mode, staging / f"zero-shot-{mode}", spacing=cfg.data.spacing)
            print(format_table(s))
            summary[f"zero_shot_dice_{mode}"] = s["mean"]["dice"]
        del base_model
        result = train(cfg, overwrite=overwrite)
        for folder in staging.iterdir():
            shutil.move(str(folder), output / folder.name)
    model, record, cfg = load_trained(result.run_dir)
    summary.update(train_steps=result.steps, best_val_dice=result.best_dice)
    for mode in MODES:
        s = evaluate(model, dataset, mode, output / f"eval-test-{mode}", spacing=cfg.data.spacing)
        print(format_table(s))
        summary[f"test_dice_{mode}"] = s["mean"]["dice"]
        summary[f"test_dice_{mode}_per_class"] = {n: c["dice"] for n, c in s["per_class"].items()}
    summary["dice_gain_box"] = summary["test_dice_box"] - summary["zero_shot_dice_box"]
    if identity.random_init:
        summary["note"] = f"RANDOM-INIT base ({identity.source}): these numbers are not a pretrained model's"
    summary["report"] = str(write_report(output))
    summary["pictures"] = [str(output / "curves.png"), str(output / "eval-test-box" / "overlays")]
    return summary
