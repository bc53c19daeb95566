"""Benchmark of one training step of SAM ViT-B per adaptation method: seconds per step and peak memory.

Builds ``sam-vit-base`` (random init, so nothing is downloaded) at ``--image-size`` (256) with a
learned class prompt and one class, and times full training steps on a fixed synthetic batch
(``--batch`` 2 images, one box prompt each, a rectangular mask): forward, Dice+BCE loss, backward,
gradient clipping (``train.max_grad_norm``, as the trainer does), AdamW step and ``zero_grad``.
Methods: ``layernorm`` (encoder norms), ``lora`` (r=4 on qkv), ``decoder`` (mask decoder + prompt
encoder) and ``full``; the learned class prompt trains in every one.

Each method runs in a fresh subprocess, so its memory figures are its own: ``peak`` is the process's
peak RSS (``VmHWM``, never reset here, so equal to ``ru_maxrss``), ``rss0`` the RSS right before the
first step (model and optimizer built), and ``train peak`` = ``peak - rss0``, the extra memory the steps need (activations, gradients,
optimizer state). One warm-up step (which also allocates the AdamW state) is excluded from the
timings; the reported times are medians over ``--steps`` timed steps. ``cpu s`` is the process's CPU
time per step (all threads): with ``--threads 1`` it measures the work itself and barely moves when
other processes compete for the cores, whereas wall-clock seconds do.

    python benchmarks/train_step.py --steps 3 --out results/train_step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from machine import machine_info
from process_memory import current_rss_mib, emit_result, peak_rss_mib, run_marked_worker

METHODS: dict[str, list[dict[str, Any]]] = {
    "layernorm": [{"name": "layernorm"}],
    "lora": [{"name": "lora", "r": 4, "targets": "qkv"}],
    "decoder": [{"name": "decoder"}],
    "full": [{"name": "full"}],
}


def measure(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build one configuration and time its training steps (run inside a fresh worker process)."""
    import gc

    import torch

    from medpeft.config import parse_config
    from medpeft.engine.build import build_model, build_optimizer
    from medpeft.engine.report import trainable_share
    from medpeft.models.prompts import Prompts
    from medpeft.tasks.segmentation_loss import SegmentationLoss

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = parse_config(
        {
            "model": {"base": args.base, "image_size": args.image_size, "class_prompt": "learned"},
            "adapters": METHODS[method],
        }
    )
    model, _ = build_model(cfg, ["target"])
    model.train()
    optimizer = build_optimizer(cfg, model)
    loss_fn = SegmentationLoss(cfg.loss)
    trainable, total = trainable_share(model)

    b, s = args.batch, args.image_size
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(b, 3, s, s, generator=gen)
    masks = torch.zeros(b, 1, s, s)
    masks[:, :, s // 4 : 3 * s // 4, s // 3 : 2 * s // 3] = 1.0
    box = torch.tensor([s // 3, s // 4, 2 * s // 3, 3 * s // 4], dtype=torch.float32)
    prompts = Prompts(
        boxes=box.expand(b, 1, 4).clone(),
        box_valid=torch.ones(b, 1, dtype=torch.bool),
        class_ids=torch.zeros(b, 1, dtype=torch.long),
    )
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> tuple[float, float, float, float, float]:
        c0, t0 = time.process_time(), time.perf_counter()
        logits = model(images, prompts)
        loss, _ = loss_fn(logits, masks)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if cfg.train.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, time.process_time() - c0, float(loss.detach())

    gc.collect()
    rss0, peak0 = current_rss_mib(), peak_rss_mib()
    step()  # warm-up: allocates the AdamW state, not timed
    timings = [step() for _ in range(args.steps)]
    fwd, bwd, opt, cpu, losses = (list(col) for col in zip(*timings, strict=True))
    totals = [f + b_ + o for f, b_, o in zip(fwd, bwd, opt, strict=True)]
    peak = peak_rss_mib()
    return {
        "method": method,
        "adapters": METHODS[method],
        "trainable": trainable,
        "total": total,
        "share": trainable / total,
        "seconds_per_step": statistics.median(totals),
        "forward_s": statistics.median(fwd),
        "backward_s": statistics.median(bwd),
        "optimizer_s": statistics.median(opt),
        "cpu_seconds_per_step": statistics.median(cpu),
        "step_seconds": totals,
        "losses": losses,
        "rss_before_mib": rss0,
        "peak_before_mib": peak0,
        "peak_rss_mib": peak,
        "train_peak_mib": peak - rss0,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run_worker(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Measure ``method`` in a fresh Python process and return its result row."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        method,
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--image-size",
        str(args.image_size),
        "--base",
        args.base,
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return run_marked_worker(cmd, {"method": method})


def print_table(rows: list[dict[str, Any]]) -> None:
    """A fixed-width table of the result rows."""
    header = (
        f"{'method':<10} {'trainable':>12} {'share':>8} {'s/step':>7} {'fwd':>6} {'bwd':>6} {'opt':>6} {'cpu s':>6} "
        f"{'rss0 MiB':>9} {'train peak':>11} {'peak MiB':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['method']:<10} {r['error']}")
            continue
        print(
            f"{r['method']:<10} {r['trainable']:>12,} {100 * r['share']:>7.3f}% {r['seconds_per_step']:>7.2f} "
            f"{r['forward_s']:>6.2f} {r['backward_s']:>6.2f} {r['optimizer_s']:>6.2f} {r['cpu_seconds_per_step']:>6.2f} "
            f"{r['rss_before_mib']:>9.0f} {r['train_peak_mib']:>11.0f} {r['peak_rss_mib']:>9.0f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps after 1 warm-up (default 5, --quick 2)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="2 timed steps")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--base", default="sam-vit-base", help="SAM preset (random init)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/train_step.json"))
    parser.add_argument("--worker", choices=list(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 2 if args.quick else 5

    if args.worker:
        emit_result(measure(args.worker, args))
        return 0

    config = {
        "base": args.base,
        "image_size": args.image_size,
        "batch": args.batch,
        "classes": 1,
        "prompt": "box",
        "loss": "dice+bce",
        "optimizer": "adamw",
        "steps": args.steps,
        "warmup_steps": 1,
        "threads_requested": args.threads,
        **machine_info(),
    }
    print(f"# train-step benchmark: {json.dumps(config)}", file=sys.stderr, flush=True)
    rows = []
    for method in args.methods:
        row = run_worker(method, args)
        rows.append(row)
        print(f"  done {method} in {row['wall_s']:.0f} s", file=sys.stderr, flush=True)
    ok = [r for r in rows if "error" not in r]
    if ok:
        config.update(torch=ok[0]["torch"], threads=ok[0]["threads"])
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": config, "results": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
