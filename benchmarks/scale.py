"""Benchmark: the cached-embedding fast path, and 1 vs 2 training processes.

1. Decoder-only training (prompt encoder + mask decoder) of SAM ViT-B at 256 px on synthetic images,
   epoch time with and without ``train.embedding_cache`` (the first epoch fills the cache), and the
   per-step losses of both (the same, up to float rounding).
2. The same LoRA run with 1 and 2 processes at the same global batch (``train --processes``): steps/s,
   the peak memory of the largest process, and the losses (equal).
The memory savers (gradient checkpointing, bf16) are measured by ``train_step.py --savers``.

    python benchmarks/scale.py --out docs/scale.json
    python benchmarks/scale.py --base facebook/sam-vit-huge --image-size 1024 --device cuda   # GPU
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def cache_epochs(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from conftest import make_shapes_dataset
    from medpeft.config import parse_config
    from medpeft.data.readers import read_dataset
    from medpeft.engine.build import build_model, build_optimizer
    from medpeft.engine.embedding_cache import EmbeddingCache, cache_mode
    from medpeft.tasks.segmentation import SegmentationTask, build_dataset

    data = make_shapes_dataset(
        Path(tempfile.mkdtemp()) / "shapes", n=args.images, size=args.image_size, big=True
    )
    out: dict[str, Any] = {}
    for cached in (False, True):
        torch.manual_seed(0)
        cfg = parse_config(
            {
                "model": {"base": args.base, "image_size": args.image_size, "class_prompt": "learned"},
                "data": {"root": str(data), "augment": {"hflip_p": 0, "brightness_p": 0, "contrast_p": 0}},
                "prompts": {"train_modes": {"box": 1.0}},
                "adapters": [{"name": "decoder"}],
                "train": {"embedding_cache": "memory" if cached else "off", "batch_size": 4},
            }
        )
        records, labels = read_dataset(data)
        model, identity = build_model(cfg, labels)
        model.to(args.device).train()
        task = SegmentationTask(cfg)
        dataset = build_dataset(cfg, records, labels, train=True)
        mode, _ = cache_mode(cfg, model)
        task.embedding_cache = EmbeddingCache(dataset, identity.sha256, cfg) if mode != "off" else None
        optimizer = build_optimizer(cfg, model)
        epochs, losses = [], []
        for epoch in range(args.epochs):
            t0 = time.perf_counter()
            for step, batch in enumerate(DataLoader(dataset, batch_size=4, shuffle=False)):
                batch = {k: v.to(args.device) if hasattr(v, "to") else v for k, v in batch.items()}
                loss, _ = task.loss(model, batch, epoch * 100 + step, 0)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
            epochs.append(time.perf_counter() - t0)
            print(f"  cache {'on' if cached else 'off'} epoch {epoch}: {epochs[-1]:.2f} s", flush=True)
        out["cached" if cached else "plain"] = {"epoch_seconds": epochs, "losses": losses}
    plain, cached = out["plain"], out["cached"]
    out["speedup_after_first"] = sum(plain["epoch_seconds"][1:]) / sum(cached["epoch_seconds"][1:])
    out["max_loss_difference"] = max(
        abs(a - b) for a, b in zip(plain["losses"], cached["losses"], strict=True)
    )
    return out


def processes(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The same LoRA run (``--process-base`` at 256, global batch 4) with 1 and 2 processes (each one
    thread, as on this 2-core machine): steps/s and the peak RSS of the largest process."""
    import csv
    import os
    import subprocess

    import yaml

    from conftest import make_shapes_dataset

    root = Path(tempfile.mkdtemp())
    data = make_shapes_dataset(root / "shapes", n=40, size=256, big=True)
    rows = []
    for n in (1, 2):
        raw = {
            "model": {"base": args.process_base, "image_size": 256},
            "data": {"root": str(data), "split": [0.8, 0.2, 0.0], "augment": {"hflip_p": 0.0}},
            "adapters": [{"name": "lora", "r": 4}, {"name": "decoder"}],
            "train": {
                "output_dir": str(root / f"run{n}"),
                "epochs": 1,
                "max_steps": args.process_steps,
                "batch_size": 4,
                "log_every": 1,
            },
        }
        (root / f"c{n}.yaml").write_text(yaml.safe_dump(raw))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        command = [sys.executable, "-m", "medpeft", "train", str(root / f"c{n}.yaml"), "--processes", str(n)]
        # a fresh parent per run: its children's maximum RSS is this run's largest process alone
        probe = (
            "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True);"
        )
        probe += " print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        done = subprocess.run(
            [sys.executable, "-c", probe, *command], check=True, env=env, capture_output=True, text=True
        )
        wall = time.perf_counter() - t0
        peak = int(done.stdout.split()[-1])
        log = [r for r in csv.DictReader((root / f"run{n}" / "log.csv").open()) if r.get("loss")]
        seconds = float(log[-1]["seconds"]) - float(log[0]["seconds"])
        rows.append(
            {
                "processes": n,
                "steps_per_second": (len(log) - 1) / seconds,
                "wall_seconds": wall,
                "peak_rss_mib_largest_process": peak / 1024.0,
                "losses": [float(r["loss"]) for r in log],
            }
        )
        print(f"  {n} process(es): {rows[-1]['steps_per_second']:.2f} steps/s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="sam-vit-base")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--process-base", default="sam-mini-med")
    p.add_argument("--process-steps", type=int, default=12)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("[scale] decoder-only epochs, embedding cache off / on", flush=True)
    cache = cache_epochs(args)
    print("[scale] 1 vs 2 processes, LoRA, global batch 4", flush=True)
    proc = processes(args)
    one = proc[0]
    lines = [
        f"decoder-only epoch (s), cache off: {', '.join(f'{t:.2f}' for t in cache['plain']['epoch_seconds'])}; "
        f"on: {', '.join(f'{t:.2f}' for t in cache['cached']['epoch_seconds'])}; "
        f"{cache['speedup_after_first']:.1f}x after the first epoch; max |loss difference| {cache['max_loss_difference']:.1e}",
        "",
        "| processes | steps/s | efficiency | peak RSS MiB (largest process) | max |loss - 1 process| |",
        "|---|---|---|---|---|",
    ]
    for r in proc:
        diff = max(abs(a - b) for a, b in zip(r["losses"], one["losses"], strict=True))
        efficiency = r["steps_per_second"] / one["steps_per_second"] / r["processes"]
        lines.append(
            f"| {r['processes']} | {r['steps_per_second']:.2f} | {100 * efficiency:.0f}% | "
            f"{r['peak_rss_mib_largest_process']:.0f} | {diff:.1e} |"
        )
    return report(
        proc,
        "\n".join(lines),
        args.out,
        settings={k: str(v) for k, v in vars(args).items()},
        cache=cache,
    )


if __name__ == "__main__":
    main()
