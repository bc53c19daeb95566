"""Benchmark: the cached-embedding fast path, and 1 vs 2 training processes.

1. Decoder-only training (prompt encoder + mask decoder) of SAM ViT-B at 256 px on synthetic images,
   epoch time with and without ``train.embedding_cache`` (the first epoch fills the cache), and the
   per-step losses of both (the same, up to float rounding).
2. The same LoRA run with 1 and 2 processes at the same global batch (``train --processes``), and full
   fine-tuning of ViT-B with 1 process, 2 with DDP and 2 with FSDP (``train.distributed``): steps/s, the
   peak memory of each process, and the losses (equal).
The memory savers (gradient checkpointing, bf16) are measured by ``train_step.py --savers``.

    python benchmarks/scale.py --out docs/scale.json
    python benchmarks/scale.py --base facebook/sam-vit-huge --image-size 1024 --device cuda   # GPU
"""

from __future__ import annotations

import argparse
import json
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


def run_processes(root: Path, name: str, raw: dict[str, Any], n: int) -> dict[str, Any]:
    """One ``medpeft train --processes n`` run: steps/s (from its log), each process's peak RSS, losses."""
    import csv
    import os
    import subprocess

    import yaml

    raw["train"]["output_dir"] = str(root / name)
    (root / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    peaks = root / f"{name}-peaks"
    peaks.mkdir()
    here = Path(__file__).resolve().parent
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        # rank_memory/sitecustomize.py records each process's memory (prepared model, training peak)
        "PYTHONPATH": os.pathsep.join(
            [str(here / "rank_memory"), str(here), os.environ.get("PYTHONPATH", "")]
        ),
        "MEDPEFT_BENCH_PEAKS": str(peaks),
        **({"MEDPEFT_BENCH_SINGLE": "1"} if n == 1 else {}),
    }
    command = [sys.executable, "-m", "medpeft", "train", str(root / f"{name}.yaml"), "--processes", str(n)]
    t0 = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log = [r for r in csv.DictReader((root / name / "log.csv").open()) if r.get("loss")]
    seconds = float(log[-1]["seconds"]) - float(log[0]["seconds"])

    memory = [json.loads((peaks / f"rank-{r}.json").read_text()) for r in range(n)]
    return {
        "run": name,
        "processes": n,
        "distributed": raw["train"].get("distributed", "ddp"),
        "steps_per_second": (len(log) - 1) / seconds,
        "wall_seconds": wall,
        "trained_state_mib_per_process": [m["trained_state"] for m in memory],
        "cuda_train_peak_mib_per_process": [m.get("cuda_train") for m in memory],
        "prepared_rss_mib_per_process": [m["prepared"] for m in memory],
        "train_peak_rss_mib_per_process": [m["train"] for m in memory],
        "exit_peak_rss_mib_per_process": [m["exit"] for m in memory],
        "losses": [float(r["loss"]) for r in log],
    }


def processes(args: argparse.Namespace) -> list[dict[str, Any]]:
    """1 vs 2 processes at the same global batch (each one thread, as on this 2-core machine):

    - LoRA on ``--process-base`` at 256 px, global batch 4 (DDP);
    - full fine-tuning of ``--fsdp-base`` at 256 px, global batch 4: 1 process, 2 with DDP (each holds the
      whole model, its gradients and AdamW state) and 2 with FSDP (each holds half).
    Rank 0 also gathers the full trained tensors and optimizer state when it writes the checkpoint."""
    from conftest import make_shapes_dataset

    root = Path(tempfile.mkdtemp())
    data = make_shapes_dataset(root / "shapes", n=40, size=256, big=True)

    def config(base: str, adapters: list[dict[str, Any]], steps: int, distributed: str) -> dict[str, Any]:
        return {
            "model": {"base": base, "image_size": 256},
            "data": {"root": str(data), "split": [0.8, 0.2, 0.0], "augment": {"hflip_p": 0.0}},
            "adapters": adapters,
            "train": {
                "epochs": 1,
                "max_steps": steps,
                "batch_size": 4,
                "log_every": 1,
                "distributed": distributed,
            },
        }

    lora = [{"name": "lora", "r": 4}, {"name": "decoder"}]
    runs = [
        ("lora-1", config(args.process_base, lora, args.process_steps, "ddp"), 1),
        ("lora-2", config(args.process_base, lora, args.process_steps, "ddp"), 2),
        ("full-1", config(args.fsdp_base, [{"name": "full"}], args.fsdp_steps, "ddp"), 1),
        ("full-2-ddp", config(args.fsdp_base, [{"name": "full"}], args.fsdp_steps, "ddp"), 2),
        ("full-2-fsdp", config(args.fsdp_base, [{"name": "full"}], args.fsdp_steps, "fsdp"), 2),
    ]
    rows = []
    for name, raw, n in runs:
        rows.append(run_processes(root, name, raw, n))
        r = rows[-1]
        prepared = ", ".join(f"{p:.0f}" for p in r["prepared_rss_mib_per_process"])
        peaks = ", ".join(f"{p:.0f}" for p in r["train_peak_rss_mib_per_process"])
        print(
            f"  {name}: {r['steps_per_second']:.2f} steps/s, RSS MiB prepared {prepared}, training peak {peaks}"
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
    p.add_argument("--process-base", default="sam-mini-med")
    p.add_argument("--process-steps", type=int, default=12)
    p.add_argument(
        "--fsdp-base", default="sam-vit-base", help="the full fine-tuning runs' base (DDP vs FSDP)"
    )
    p.add_argument("--fsdp-steps", type=int, default=6)
    p.add_argument(
        "--skip-cache", action="store_true", help="only the process runs (--out keeps its cache figures)"
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cache = None
    lines = []
    if args.skip_cache and args.out is not None and args.out.is_file():  # keep the cache figures on record
        cache = json.loads(args.out.read_text()).get("cache")
    else:
        print("[scale] decoder-only epochs, embedding cache off / on", flush=True)
        cache = cache_epochs(args)
    if cache is not None:
        lines += [
            f"decoder-only epoch (s), cache off: {', '.join(f'{t:.2f}' for t in cache['plain']['epoch_seconds'])}; "
            f"on: {', '.join(f'{t:.2f}' for t in cache['cached']['epoch_seconds'])}; "
            f"{cache['speedup_after_first']:.1f}x after the first epoch; "
            f"max |loss difference| {cache['max_loss_difference']:.1e}",
            "",
        ]
    print("[scale] 1 vs 2 processes (DDP, FSDP), global batch 4", flush=True)
    proc = processes(args)
    lines += [
        "| run | processes | sharding | steps/s | efficiency | trained tensors + grads + AdamW MiB per process | "
        "RSS MiB per process: prepared model | "
        "training peak | with the checkpoint write | max |loss - 1 process| |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in proc:
        one = next(
            o for o in proc if o["run"].split("-")[0] == r["run"].split("-")[0] and o["processes"] == 1
        )
        diff = max(abs(a - b) for a, b in zip(r["losses"], one["losses"], strict=True))
        efficiency = r["steps_per_second"] / one["steps_per_second"] / r["processes"]
        prepared = " / ".join(f"{p:.0f}" for p in r["prepared_rss_mib_per_process"])
        peaks = " / ".join(f"{p:.0f}" for p in r["train_peak_rss_mib_per_process"])
        exits = " / ".join(f"{p:.0f}" for p in r["exit_peak_rss_mib_per_process"])
        held = " / ".join(f"{p:.0f}" for p in r["trained_state_mib_per_process"])
        lines.append(
            f"| {r['run']} | {r['processes']} | {r['distributed'] if r['processes'] > 1 else '-'} | "
            f"{r['steps_per_second']:.2f} | {100 * efficiency:.0f}% | {held} | {prepared} | {peaks} | {exits} | {diff:.1e} |"
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
