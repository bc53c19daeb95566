"""Benchmark of one training step per backbone and adaptation method: seconds per step and peak memory.

Backbones, each at its default size with the published architecture in random init (nothing is
downloaded): SAM ViT-B (``sam-vit-base``, 256), SAM2.1 Hiera-tiny (``sam2.1-hiera-tiny``, 256) and
Depth Anything V2 Small (``depth-anything-v2-small``, 518). Each step is the trainer's own
(:func:`medpeft.engine.step.training_loss`: the task's loss plus method terms) on a fixed synthetic
batch (``--batch`` 2 images; segmentation: one box prompt and a rectangular mask each, learned class
prompt; depth: a tilted-plane depth map), then backward, gradient clipping (``train.max_grad_norm``),
AdamW step and ``zero_grad``. Methods: ``layernorm`` (encoder norms), ``lora`` (r=4 on the attention
input projections), ``svd`` (S-SAM on every encoder matrix), ``decoder`` (mask decoder + prompt encoder;
Depth Anything's DPT neck and head) and ``full``.

Each method runs in a fresh subprocess, so its memory figures are its own: ``peak`` is the process's
peak RSS (``VmHWM``, never reset here, so equal to ``ru_maxrss``), ``rss0`` the RSS right before the
first step (model and optimizer built), and ``train peak`` = ``peak - rss0``, the extra memory the steps need (activations, gradients,
optimizer state). One warm-up step (which also allocates the AdamW state) is excluded from the
timings; the reported times are medians over ``--steps`` timed steps. ``cpu s`` is the process's CPU
time per step (all threads): with ``--threads 1`` it measures the work itself and barely moves when
other processes compete for the cores, whereas wall-clock seconds do.

    python benchmarks/train_step.py --steps 3 --out results/train_step.json
    python benchmarks/train_step.py --backbones sam2 --methods lora full   # a subset
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
    "svd": [{"name": "svd"}],
    "decoder": [{"name": "decoder"}],
    "full": [{"name": "full"}],
}
BACKBONES: dict[str, tuple[str, int]] = {
    "sam": ("sam-vit-base", 256),
    "sam2": ("sam2.1-hiera-tiny", 256),
    "depth_anything": ("depth-anything-v2-small", 518),
}


def synthetic_batch(task: str, b: int, s: int) -> dict[str, Any]:
    """A fixed batch in the layout the task's dataset produces."""
    import torch

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(b, 3, s, s, generator=gen)
    if task == "depth":
        depth = torch.linspace(1.0, 3.0, s).view(1, 1, s, 1).expand(b, 1, s, s).clone()
        return {"image": images, "depth": depth, "valid": depth > 0}
    masks = torch.zeros(b, 1, s, s)
    masks[:, :, s // 4 : 3 * s // 4, s // 3 : 2 * s // 3] = 1.0
    box = torch.tensor([s // 3, s // 4, 2 * s // 3, 3 * s // 4], dtype=torch.float32)
    return {
        "image": images,
        "masks": masks,
        "boxes": box.expand(b, 1, 4).clone(),
        "box_valid": torch.ones(b, 1, dtype=torch.bool),
        "points": torch.zeros(b, 1, 1, 2),
        "point_labels": torch.ones(b, 1, 1, dtype=torch.long),
        "class_ids": torch.zeros(b, 1, dtype=torch.long),
    }


def measure(job: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build one ``backbone:method`` configuration and time its training steps (in a fresh worker process)."""
    import gc

    import torch

    from medpeft.config import parse_config
    from medpeft.engine.build import build_model, build_optimizer
    from medpeft.engine.report import trainable_share
    from medpeft.engine.step import method_penalties, training_loss
    from medpeft.tasks.base import make_task

    backbone, method, saver = (job.split(":") + ["none"])[:3]
    base, size = BACKBONES[backbone]
    if args.threads:
        torch.set_num_threads(args.threads)
    window = "auto" if saver == "unpadded" else None  # SAM's windows tiling the grid (model.window_size)
    cfg = parse_config(
        {
            "model": {"base": base, "image_size": size, "class_prompt": "learned", "window_size": window},
            "prompts": {"train_modes": {"box": 1.0}},
            "adapters": METHODS[method],
        }
    )
    model, _ = build_model(cfg, ["target"])
    model.train()
    if saver == "checkpoint":
        from medpeft.engine.grad_checkpoint import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=saver == "bf16")
    optimizer = build_optimizer(cfg, model)
    task, penalties = make_task(cfg), method_penalties(cfg)
    trainable, total = trainable_share(model)
    batch = synthetic_batch(cfg.task, args.batch, size)
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> tuple[float, float, float, float, float]:
        c0, t0 = time.process_time(), time.perf_counter()
        with autocast:
            loss, _ = training_loss(task, penalties, model, batch, 0, 0)
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
        "backbone": backbone,
        "base": base,
        "image_size": size,
        "method": method,
        "saver": saver,
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


def run_worker(job: str, args: argparse.Namespace) -> dict[str, Any]:
    """Measure ``backbone:method`` in a fresh Python process and return its result row."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", job, "--steps", str(args.steps)]
    cmd += ["--batch", str(args.batch)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    backbone, method, saver = (job.split(":") + ["none"])[:3]
    return run_marked_worker(cmd, {"backbone": backbone, "method": method, "saver": saver})


def print_table(rows: list[dict[str, Any]]) -> None:
    """A fixed-width table of the result rows."""
    header = (
        f"{'backbone':<15} {'method':<10} {'saver':<10} {'trainable':>12} {'share':>8} {'s/step':>7} {'fwd':>6} {'bwd':>6} {'opt':>6} {'cpu s':>6} "
        f"{'rss0 MiB':>9} {'train peak':>11} {'peak MiB':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['backbone']:<15} {r['method']:<10} {r.get('saver', 'none'):<10} {r['error']}")
            continue
        print(
            f"{r['backbone']:<15} {r['method']:<10} {r.get('saver', 'none'):<10} {r['trainable']:>12,} {100 * r['share']:>7.3f}% {r['seconds_per_step']:>7.2f} "
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
    parser.add_argument("--backbones", nargs="+", choices=list(BACKBONES), default=list(BACKBONES))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--savers",
        nargs="+",
        choices=["none", "checkpoint", "bf16", "unpadded"],
        default=["none"],
        help="memory savers (gradient checkpointing of the encoder blocks, bf16 autocast) or SAM's unpadded windows",
    )
    parser.add_argument("--out", type=Path, default=Path("results/train_step.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 2 if args.quick else 5

    if args.worker:
        emit_result(measure(args.worker, args))
        return 0

    config = {
        "backbones": {b: {"base": BACKBONES[b][0], "image_size": BACKBONES[b][1]} for b in args.backbones},
        "batch": args.batch,
        "classes": 1,
        "prompt": "box",
        "loss": "segmentation: dice+bce; depth: scale-and-shift-invariant",
        "optimizer": "adamw",
        "steps": args.steps,
        "warmup_steps": 1,
        "threads_requested": args.threads,
        **machine_info(),
    }
    print(f"# train-step benchmark: {json.dumps(config)}", file=sys.stderr, flush=True)
    rows = []
    for backbone in args.backbones:
        for method in args.methods:
            for saver in args.savers:
                row = run_worker(f"{backbone}:{method}:{saver}", args)
                rows.append(row)
                print(
                    f"  done {backbone} {method} {saver} in {row['wall_s']:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
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
