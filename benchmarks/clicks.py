"""Benchmark: interactive refinement with and without SAM's simulated-click training.

Two LoRA + decoder (+ prompt encoder) runs on MSD Hippocampus slices of training subjects, the same
steps and prompts (box or point), one with ``prompts.click_rounds`` (rounds of error-region clicks with
the previous logits as mask input before each trained forward, on half the micro-batches). Both are
then evaluated as a clinician would use them: from one click (or a box), five clicks at the largest
error region, Dice after each, on slices of held-out subjects, with and without the mask input.

    python benchmarks/clicks.py --out docs/clicks.json
    python benchmarks/clicks.py --base facebook/sam-vit-base --image-size 1024 --steps 3000   # GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from machine import report
from volumetric import SHARED, axial_slices, slice_route_config, subjects


def train_run(args: argparse.Namespace, data: Path, name: str, rounds: int) -> tuple[Path, float]:
    from medpeft.engine.trainer import train

    prompts = {
        "train_modes": {"box": 0.5, "point": 0.5},
        "eval_mode": "point",
        "click_rounds": rounds,
        "click_p": 0.5,
    }
    cfg = slice_route_config(args, data, args.work / name, prompts)
    t0 = time.perf_counter()
    result = train(cfg, overwrite=True, progress=False)
    return result.run_dir, time.perf_counter() - t0


def evaluate(run: Path, test: Path, clicks: int) -> dict[str, Any]:
    from medpeft.data.readers import read_dataset
    from medpeft.engine.restore import load_trained
    from medpeft.tasks.segmentation import build_dataset
    from medpeft.tasks.segmentation_clicks import simulate_clicks

    model, record, cfg = load_trained(run)
    records, _ = read_dataset(test)
    dataset = build_dataset(cfg, records, record.label_names, train=False)
    out = {"slices": len(dataset)}
    for start in ("point", "box"):
        for mask_input in (True, False):
            key = f"{start}{'' if mask_input else '_no_mask_input'}"
            out[key] = simulate_clicks(model, dataset, clicks, start, 8, mask_input)["mean"]
    return out


def picture(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100, sharey=True)
    for ax, start in zip(axes, ("point", "box"), strict=True):
        for r, colour in zip(rows, ("tab:gray", "tab:blue"), strict=True):
            for suffix, style in (("", "-"), ("_no_mask_input", ":")):
                values = r[f"{start}{suffix}"]
                label = f"{r['training']}{' (no mask input)' if suffix else ''}"
                ax.plot(range(1, len(values) + 1), values, style, color=colour, marker="o", ms=3, label=label)
        ax.set_title(f"from a {start}", fontsize=9)
        ax.set_xlabel("click")
        ax.set_xticks(range(1, len(rows[0][start]) + 1))
    axes[0].set_ylabel("mean Dice (held-out subjects)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def format_table(rows: list[dict[str, Any]]) -> str:
    n = len(rows[0]["point"])
    lines = [
        "| training | start | mask input | " + " | ".join(f"click {k}" for k in range(1, n + 1)) + " |",
        "|---|---|---|" + "---|" * n,
    ]
    for r in rows:
        for start in ("point", "box"):
            for suffix, shown in (("", "yes"), ("_no_mask_input", "no")):
                values = " | ".join(f"{v:.3f}" for v in r[f"{start}{suffix}"])
                lines.append(f"| {r['training']} | {start} | {shown} | {values} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="msd-hippocampus")
    p.add_argument("--base", default="sam-mini-med")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--clicks", type=int, default=5)
    p.add_argument("--train-subjects", type=int, default=40)
    p.add_argument("--test-subjects", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("runs/bench_clicks"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not (SHARED / args.dataset).is_dir():
        sys.exit(f"dataset not found: {SHARED / args.dataset}")
    torch.set_num_threads(args.threads)
    train_cases, test_cases, table = subjects(
        args.dataset, args.train_subjects, args.test_subjects, args.seed
    )
    data = axial_slices(train_cases, table, args.work / "slices")
    test = axial_slices(test_cases, table, args.work / "test_slices")
    rows = []
    for name, rounds in (("prompts only", 0), (f"+ {args.rounds} click rounds", args.rounds)):
        print(f"[clicks] training {name} ...", flush=True)
        run, seconds = train_run(args, data, f"run_{rounds}", rounds)
        rows.append(
            {
                "training": name,
                "click_rounds": rounds,
                "train_seconds": seconds,
                **evaluate(run, test, args.clicks),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if args.out is not None:
        picture(rows, args.out.with_suffix(".png"))
    return report(rows, format_table(rows), args.out, settings={k: str(v) for k, v in vars(args).items()})


if __name__ == "__main__":
    main()
