"""Benchmark of self-supervised depth (DARES set-up): AbsRel / RMSE / delta before and after
fine-tuning from video alone, for LoRA vs Vector-LoRA at an equal trainable-parameter budget and full
fine-tuning, with step time and peak memory.

Data: rendered sequences with known depth (:func:`medpeft.data.synthetic.make_video_dataset`: a camera
gliding over textured, curved tissue-like surfaces; trained and scored on the same frames, whose depth
the training never sees), or any sequence folder given (``--data``; scored on its frames with
ground-truth depth). Each method runs in a fresh subprocess (its own peak RSS). Vector-LoRA uses DARES's
schedule (14, 14, 12, 12, ... on q and v); LoRA gets the uniform rank with the same parameter count.

    python benchmarks/depth.py --out docs/depth_selfsup.json
    # a GPU user with the hub and SCARED / Hamlyn:
    python benchmarks/depth.py --data SCARED_ROOT --base depth-anything/Depth-Anything-V2-Small-hf \\
        --height 252 --width 322 --epochs 20 --pose-encoder resnet18 --photometric ms_ssim --depth-scale 0.001
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

METRICS = ("abs_rel", "rmse", "a1")


def methods(blocks: int) -> dict[str, list[dict[str, Any]]]:
    """Vector-LoRA (DARES ranks), LoRA of equal parameter count (same targets), full fine-tuning."""
    from medpeft.adapters.lora import VectorLoraConfig, vector_ranks

    ranks = vector_ranks(blocks, VectorLoraConfig(schedule="dares"))
    uniform = max(1, round(sum(ranks) / blocks))
    return {
        "vector_lora": [{"name": "vector_lora", "schedule": "dares", "targets": "qv"}, {"name": "decoder"}],
        "lora": [{"name": "lora", "r": uniform, "targets": "qv"}, {"name": "decoder"}],
        "full": [{"name": "full"}],
    }


def job_config(
    args: dict[str, Any], adapters: list[dict[str, Any]], data: Path, run_dir: Path
) -> dict[str, Any]:
    return {
        "task": "selfsup_depth",
        "model": {"base": args["base"], "image_size": args["height"]},
        "data": {"root": str(data), "split": [1.0, 0.0, 0.0]},
        "depth": {"scale": args["depth_scale"]},
        "selfsup": {
            "image_width": args["width"],
            "pose_encoder": args["pose_encoder"],
            "scales": args["scales"],
            "photometric": args["photometric"],
        },
        "adapters": adapters,
        "train": {
            "output_dir": str(run_dir),
            "epochs": args["epochs"],
            "batch_size": args["batch"],
            "lr": args["lr"],
            "warmup_steps": 3,
            "schedule": "constant",
            "max_grad_norm": None,
            "seed": args["seed"],
        },
    }


def worker(job_file: Path) -> None:
    import numpy as np
    import torch

    from medpeft.config import parse_config
    from medpeft.engine.build import build_model
    from medpeft.engine.report import trainable_share
    from medpeft.engine.restore import load_trained
    from medpeft.engine.trainer import train
    from medpeft.tasks.base import make_task

    job = json.loads(job_file.read_text())
    torch.set_num_threads(job["threads"])
    cfg = parse_config(job["config"], source=f"depth benchmark {job['method']}")
    task = make_task(cfg)
    frames = task.dataset(task.splits().train, [], train=False)

    def scores(model: Any) -> dict[str, float]:
        rows = task.scores(model, frames)
        return {m: float(np.mean([r[m] for r in rows])) for m in METRICS}

    model, _ = build_model(cfg, [])
    trainable, total = trainable_share(model)
    before = scores(model)
    t0 = time.perf_counter()
    result = train(cfg, overwrite=True, progress=False)
    seconds = time.perf_counter() - t0
    after = scores(load_trained(result.run_dir)[0])
    emit_result(
        {
            "method": job["method"],
            **{f"{m}_before": v for m, v in before.items()},
            **{f"{m}_after": v for m, v in after.items()},
            "steps": result.steps,
            "s_per_step": seconds / max(1, result.steps),
            "peak_rss_mib": peak_rss_mib(),
            "trainable": trainable,
            "total_params": total,
        }
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | trainable | AbsRel before → after | RMSE before → after | δ<1.25 before → after | s/step | peak MiB |",
        "|" + "---|" * 7,
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} ||||||")
            continue
        lines.append(
            f"| {r['method']} | {r['trainable']:,} | {r['abs_rel_before']:.3f} → {r['abs_rel_after']:.3f} | "
            f"{r['rmse_before']:.3f} → {r['rmse_after']:.3f} | {r['a1_before']:.3f} → {r['a1_after']:.3f} | "
            f"{r['s_per_step']:.2f} | {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="a sequence folder (default: rendered sequences)")
    p.add_argument("--base", default="depth-anything-tiny")
    p.add_argument("--height", type=int, default=56)
    p.add_argument("--width", type=int, default=70)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--scales", type=int, default=2)
    p.add_argument("--photometric", default="ssim", choices=("ssim", "ms_ssim"))
    p.add_argument("--pose-encoder", default="tiny", choices=("tiny", "resnet10", "resnet18"))
    p.add_argument("--depth-scale", type=float, default=1.0)
    p.add_argument("--methods", nargs="+", default=["vector_lora", "lora", "full"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("runs/bench_depth"))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
        return {}
    data = args.data
    if data is None:
        from medpeft.data.synthetic import make_video_dataset

        data = make_video_dataset(
            args.work / "video", sequences=2, frames=12, height=args.height, width=args.width
        )
    from medpeft.backbones import get_backbone

    base, _ = get_backbone("depth_anything").load(args.base, args.height)
    recipes = methods(int(base.config.backbone_config.num_hidden_layers))
    settings = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("worker", "out", "work")
    }
    rows = []
    for name in args.methods:
        job = {
            "method": name,
            "threads": args.threads,
            "config": job_config(settings, recipes[name], data, args.work / name),
        }
        job_file = args.work / f"{name}.job.json"
        job_file.parent.mkdir(parents=True, exist_ok=True)
        job_file.write_text(json.dumps(job))
        print(f"[depth] {name} ...", flush=True)
        rows.append(
            run_marked_worker([sys.executable, __file__, "--worker", str(job_file)], {"method": name})
        )
        print(json.dumps(rows[-1]), flush=True)
    return report(rows, format_table(rows), args.out, data=str(data), settings=settings)


if __name__ == "__main__":
    main()
