"""Benchmark: the cached-embedding fast path, and the memory savers.

1. Decoder-only training (prompt encoder + mask decoder) of SAM ViT-B at 256 px on synthetic images,
   epoch time with and without ``train.embedding_cache`` (the first epoch fills the cache), and the
   per-step losses of both (the same, up to float rounding).
2. Peak memory and step time of full fine-tuning of ViT-B at batch 4 with no saver, gradient
   checkpointing of the encoder blocks, and bf16 autocast, each in a fresh process (``train_step.py``).

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


def savers(args: argparse.Namespace) -> list[dict[str, Any]]:
    import train_step

    ns = argparse.Namespace(steps=args.saver_steps, batch=4, threads=args.threads)
    rows = []
    for saver in ("none", "checkpoint", "bf16"):
        row = train_step.run_worker(f"sam:full:{saver}", ns)
        rows.append(row)
        print(
            f"  full fine-tuning, {saver}: {row.get('train_peak_mib', float('nan')):.0f} MiB, "
            f"{row.get('seconds_per_step', float('nan')):.2f} s/step",
            flush=True,
        )
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
    p.add_argument("--saver-steps", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("[scale] decoder-only epochs, embedding cache off / on", flush=True)
    cache = cache_epochs(args)
    print("[scale] memory savers, full fine-tuning of ViT-B at batch 4", flush=True)
    saver_rows = savers(args)
    base = next(r for r in saver_rows if r.get("saver") == "none")
    lines = [
        f"decoder-only epoch (s), cache off: {', '.join(f'{t:.1f}' for t in cache['plain']['epoch_seconds'])}; "
        f"on: {', '.join(f'{t:.1f}' for t in cache['cached']['epoch_seconds'])}; "
        f"{cache['speedup_after_first']:.1f}x after the first epoch; max |loss difference| {cache['max_loss_difference']:.1e}",
        "",
        "| saver | train peak MiB | vs none | s/step |",
        "|---|---|---|---|",
    ]
    for r in saver_rows:
        if "error" in r:
            lines.append(f"| {r['saver']} | {r['error']} | | |")
            continue
        change = (
            r["train_peak_mib"] / base["train_peak_mib"] - 1 if "train_peak_mib" in base else float("nan")
        )
        lines.append(
            f"| {r['saver']} | {r['train_peak_mib']:.0f} | {100 * change:+.0f}% | {r['seconds_per_step']:.2f} |"
        )
    return report(
        saver_rows,
        "\n".join(lines),
        args.out,
        settings={k: str(v) for k, v in vars(args).items()},
        cache=cache,
    )


if __name__ == "__main__":
    main()
