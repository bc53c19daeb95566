"""Benchmark of depth-guided segmentation: RGB-only vs depth-guided at the same budget and seed.

Variants (``model.depth_guided.depth_source``): ``rgb_only`` (``none``, the ablation),
``depth_anything`` (Depth Anything encoder features) and, where the dataset has ``depth/<stem>`` maps,
``depth_file`` (the depth map through a convolutional stem). Every variant trains the same RGB model
(default the ``sam2-tiny`` preset) for ``--steps`` optimizer steps with the same seed and data split:
SAM2's attention weights under GaLore-AdamW with an SRFT projector (the SRFT-GaLore set-up), the mask
decoder, fusion and stem in full, automatic (class-prompt) mode. Each runs in a fresh subprocess, so
``peak MiB`` (peak RSS) is its own.

Reported per variant: test Dice and ASSD (pixels; :func:`medpeft.tasks.segmentation_eval.evaluate`),
seconds per optimizer step (training wall time / steps, validation included), peak memory, trainable
parameters, and the optimizer state of GaLore vs plain AdamW on the same trainable tensors.

    python benchmarks/depth_guided.py synthetic --out docs/depth_guided_synthetic.json
    python benchmarks/depth_guided.py ../shared/data/kvasir-seg --out docs/depth_guided_kvasir.json
    # with the hub (GPU): published weights instead of random-init presets
    python benchmarks/depth_guided.py DATASET --rgb facebook/sam2.1-hiera-small \\
        --depth-model depth-anything/Depth-Anything-V2-Small-hf --image-size 512 --steps 2000

``synthetic`` writes :func:`medpeft.data.synthetic.make_depth_matters_dataset` (target invisible in RGB,
raised in depth) under ``--work``. Random-init Depth Anything presets carry no depth knowledge, so on
real frames their features are noise: the real accuracy effect needs the published weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from machine import report
from process_memory import emit_result, peak_rss_mib, run_marked_worker

VARIANTS = {"rgb_only": "none", "depth_anything": "depth_anything", "depth_file": "file"}


def job_config(args: dict[str, Any], source: str, data: Path, run_dir: Path) -> dict[str, Any]:
    """The run's config: one variant of the shared recipe."""
    return {
        "model": {
            "base": args["rgb"],
            "image_size": args["image_size"],
            "depth_guided": {
                "depth_source": source,
                "depth_model": args["depth_model"],
                "width": args["width"],
            },
        },
        "data": {
            "root": str(data),
            "split": [0.6, 0.2, 0.2],
            "resize": "resize",
            "augment": {"hflip_p": 0.5},
        },
        "prompts": {"train_modes": {"auto": 1.0}, "eval_mode": "auto"},
        "adapters": [{"name": "attention_weights", "layers": "attn"}, {"name": "decoder"}],
        "optimizer": {"name": "galore_adamw", "projector": "srft", "rank": args["rank"], "update_gap": 50},
        "train": {
            "output_dir": str(run_dir),
            "epochs": 1000,
            "max_steps": args["steps"],
            "batch_size": args["batch"],
            "lr": args["lr"],
            "warmup_steps": max(1, args["steps"] // 20),
            "seed": args["seed"],
            "val_every": 1,
        },
    }


def worker(job_file: Path) -> None:
    """Train and evaluate one variant; prints its row as a marked JSON line."""
    import torch

    from medpeft.config import parse_config
    from medpeft.engine import checkpoint as ckpt
    from medpeft.engine.report import optimizer_state_sizes, trainable_share
    from medpeft.engine.restore import load_trained
    from medpeft.engine.trainer import train
    from medpeft.tasks.segmentation import build_dataset, build_splits
    from medpeft.tasks.segmentation_eval import evaluate

    job = json.loads(job_file.read_text())
    torch.set_num_threads(job["threads"])
    cfg = parse_config(job["config"], source=f"depth_guided {job['variant']}")
    t0 = time.perf_counter()
    result = train(cfg, overwrite=True, progress=False)
    seconds = time.perf_counter() - t0
    model, _, _ = load_trained(ckpt.resolve_checkpoint(Path(cfg.train.output_dir)))
    splits = build_splits(cfg)
    test = build_dataset(cfg, splits.test, splits.label_names, train=False)
    summary = evaluate(model, test, "auto", Path(cfg.train.output_dir) / "eval", progress=False)
    trainable, total = trainable_share(model)
    state, adamw, _ = optimizer_state_sizes(model, cfg)
    emit_result(
        {
            "variant": job["variant"],
            "dice": float(summary["mean"]["dice"]),
            "assd_px": float(summary["mean"]["assd"]),
            "val_dice": result.best_dice,
            "steps": result.steps,
            "s_per_step": seconds / max(1, result.steps),
            "peak_rss_mib": peak_rss_mib(),
            "trainable": trainable,
            "total_params": total,
            "galore_state": state,
            "adamw_state": adamw,
            "test_images": len(splits.test),
        }
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    head = "| variant | test Dice | ASSD px | s/step | peak MiB | trainable | GaLore state / AdamW |"
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} |||||||")
            continue
        lines.append(
            f"| {r['variant']} | {r['dice']:.3f} | {r['assd_px']:.1f} | {r['s_per_step']:.2f} | "
            f"{r['peak_rss_mib']:.0f} | {r['trainable']:,} | {r['galore_state']:,} / {r['adamw_state']:,} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "dataset", nargs="?", help="'synthetic', or a dataset folder (depth/<stem> maps add depth_file)"
    )
    p.add_argument("--rgb", default="sam2-tiny", help="RGB segmenter: preset, hub id or local dir")
    p.add_argument(
        "--depth-model", default="depth-anything-tiny", help="Depth Anything preset, hub id or dir"
    )
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--width", type=int, default=32, help="fusion width")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--rank", type=int, default=16, help="GaLore rank (the paper: 64 on full-size SAM2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("runs/bench_depth_guided"))
    p.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
        return {}
    if args.dataset is None:
        sys.exit("give a DATASET: 'synthetic' or a dataset folder")
    name = "synthetic" if args.dataset == "synthetic" else Path(args.dataset).name
    if args.dataset == "synthetic":
        from medpeft.data.synthetic import make_depth_matters_dataset

        data = make_depth_matters_dataset(args.work / "synthetic_data", n=48, size=args.image_size)
    else:
        data = Path(args.dataset)
        if not data.is_dir():
            sys.exit(f"dataset folder not found: {data}")
    variants = ["rgb_only", "depth_anything"] + (["depth_file"] if (data / "depth").is_dir() else [])
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "out", "work", "dataset")}
    rows = []
    for variant in variants:
        run_dir = args.work / name / variant
        job = {
            "variant": variant,
            "threads": args.threads,
            "config": job_config(settings, VARIANTS[variant], data, run_dir),
        }
        job_file = args.work / name / f"{variant}.job.json"
        job_file.parent.mkdir(parents=True, exist_ok=True)
        job_file.write_text(json.dumps(job))
        print(f"[depth_guided] {name}: {variant} ...", flush=True)
        row = run_marked_worker([sys.executable, __file__, "--worker", str(job_file)], {"variant": variant})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return report(rows, format_table(rows), args.out, dataset=name, settings=settings)


if __name__ == "__main__":
    main()
