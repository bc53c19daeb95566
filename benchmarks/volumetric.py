"""Benchmark, part 1 (part 2, the 3D foundation: ``volumetric_3d.py``, ``--part 2``): a 2D foundation adapted on slices of training subjects, then evaluated in 3D
on held-out subjects with their spacing (Dice, HD95 per structure), with and without rotation (the
drop per class), and the speed of slice-by-slice volume inference.

Datasets: MSD Hippocampus (``../shared/data/msd-hippocampus``, 260 volumes) and ACDC
(``../shared/data/acdc``, its patient-level ``train.list`` / ``test.list``). Subjects are split before
slicing, so no test subject's slice is ever trained on. The base is the bundled ``sam-mini-med``
foundation (never trained on these datasets); LoRA + decoder, automatic (class-prompt) mode.

    python benchmarks/volumetric.py --out docs/volumetric.json
    python benchmarks/volumetric.py --base facebook/sam-vit-base --image-size 256 --steps 2000   # GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from machine import report

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def subjects(name: str, n_train: int, n_test: int, seed: int) -> tuple[list, list, dict[int, str]]:
    """(train cases, test cases, label table) with subjects split before slicing."""
    import numpy as np

    from medpeft.data.volume_io import read_volume_dataset

    root = SHARED / name
    if name == "acdc":
        train, table = read_volume_dataset(root, "train")
        test, _ = read_volume_dataset(root, "test")
    else:
        cases, table = read_volume_dataset(root)
        order = np.random.default_rng(seed).permutation(len(cases))
        train = [cases[i] for i in order[:n_train]]
        test = [cases[i] for i in order[n_train : n_train + n_test]]
    return train[:n_train], test[:n_test], table


def axial_slices(cases: list, table: dict[int, str], out: Path) -> Path:
    """The cases' axial slices with at least 10 labelled pixels as a 2D folder dataset (made once)."""
    from medpeft.data.volumes import export_slices

    if not (out / "labels.json").is_file():
        for image, label in cases:
            export_slices(image, label, out, table, axis=2, min_foreground_pixels=10)
    return out


def slice_route_config(
    args: argparse.Namespace, data: Path, output_dir: Path, prompts: dict[str, Any]
) -> Any:
    """The 2D route's recipe: LoRA r4 (lr 5e-3) + decoder on slices, batch 4, ``args.steps`` steps."""
    from medpeft.config import parse_config

    return parse_config(
        {
            "model": {"base": args.base, "image_size": args.image_size},
            "data": {"root": str(data), "split": [0.9, 0.1, 0.0]},
            "prompts": prompts,
            "adapters": [{"name": "lora", "r": 4, "lr": 5e-3}, {"name": "decoder"}],
            "train": {
                "output_dir": str(output_dir),
                "epochs": 1000,
                "max_steps": args.steps,
                "batch_size": 4,
                "lr": 1e-4,
                "warmup_steps": 20,
                "seed": args.seed,
            },
        }
    )


def run(
    name: str, args: argparse.Namespace, cases: tuple[list, list, dict[int, str]] | None = None
) -> dict[str, Any]:
    """The 2D route on ``name``: its subjects (or ``cases``: train cases, test cases, label table)."""
    import torch

    from medpeft.data.volume_io import read_volume, to_uint8
    from medpeft.engine.restore import load_trained
    from medpeft.engine.trainer import train
    from medpeft.engine.volumes import DEFAULT_ROTATION, evaluate_volumes, segment_volume

    torch.set_num_threads(args.threads)
    work = args.work / name
    train_cases, test_cases, table = cases or subjects(
        name, args.train_subjects, args.test_subjects, args.seed
    )
    slices = axial_slices(train_cases, table, work / ("slices" if cases is None else "slices-given"))
    cfg = slice_route_config(args, slices, work / "run", {"train_modes": {"auto": 1.0}, "eval_mode": "auto"})
    t0 = time.perf_counter()
    result = train(cfg, overwrite=True, progress=False)
    train_s = time.perf_counter() - t0
    model, _, _ = load_trained(result.run_dir)
    summary = evaluate_volumes(
        model, test_cases, table, work / "eval", rotation=DEFAULT_ROTATION, batch_size=16
    )
    volume = read_volume(test_cases[0][0])
    pixels = to_uint8(volume.array)
    t0 = time.perf_counter()
    segment_volume(model, pixels, 2, 16)
    per_slice = (time.perf_counter() - t0) / pixels.shape[2]
    return {
        "dataset": name,
        "train_subjects": len(train_cases),
        "test_subjects": len(test_cases),
        "steps": result.steps,
        "train_seconds": train_s,
        "val_dice_2d": result.best_dice,
        "per_class": summary["per_class"],
        "mean": summary["mean"],
        "rotation": summary["rotation"],
        "slices_per_second": 1.0 / per_slice,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| dataset | structure | Dice 3D | HD95 mm | Dice rotated | drop |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        for name, s in r["per_class"].items():
            rot = r["rotation"]["per_class"][name]
            lines.append(
                f"| {r['dataset']} | {name} | {s['dice']:.3f} | {s['hd95']:.2f} | {rot['dice_rotated']:.3f} | "
                f"{rot['drop']:+.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["msd-hippocampus", "acdc"])
    p.add_argument("--base", default="sam-mini-med")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--train-subjects", type=int, default=40)
    p.add_argument("--test-subjects", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("runs/bench_volumetric"))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--part", type=int, choices=(1, 2), default=1, help="2: the 3D foundation (volumetric_3d.py)"
    )
    p.add_argument("--foundation", type=Path, default=Path("runs/foundation_segvol_mini/base"))
    p.add_argument("--jobs", type=int, default=1, help="part 2: datasets in parallel worker processes")
    p.add_argument("--no-large", action="store_true", help="part 2: skip zoom vs sliding on BRATS")
    p.add_argument(
        "--inference-only", action="store_true", help="part 2: redo the inference comparison of --out"
    )
    p.add_argument(
        "--rotation-augmented", action="store_true", help="part 2: add rotation-trained rows to --out"
    )
    args = p.parse_args(argv)
    if args.part == 2:
        import volumetric_3d

        return volumetric_3d.main(args)
    rows = []
    for name in args.datasets:
        if not (SHARED / name).is_dir():
            sys.exit(f"dataset not found: {SHARED / name}")
        print(f"[volumetric] {name} ...", flush=True)
        rows.append(run(name, args))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_class"}), flush=True)
    return report(rows, format_table(rows), args.out, settings={k: str(v) for k, v in vars(args).items()})


if __name__ == "__main__":
    main()
