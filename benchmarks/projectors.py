"""Benchmark of GaLore subspace refreshes: exact SVD vs SRFT vs Gaussian sketches.

For the weight shapes of SAM ViT-B, SAM ViT-H and SAM2 Hiera-L (attention qkv/proj and MLP
layers), times one subspace refresh (``compute_basis`` as ``GaLoreAdamW`` calls it: fp32, auto
side, rank ``--rank``; median over repeats) on stand-in gradients with a decaying spectrum
(``U diag(s) V^T``, Haar-random ``U``, ``V``), and reports the speed-up over the SVD and the
fraction of gradient energy kept (``||P P^T G||_F^2 / ||G||_F^2``) relative to the SVD's.

It then fine-tunes a small random-init SAM preset on a seeded subset of Kvasir-SEG
(``../shared/data/kvasir-seg``; skipped with a message when absent) three times with the same seed,
steps and data: AdamW, GaLore-SVD and GaLore-SRFT on the encoder attention ``qkv`` / ``proj``
weights (``adapters: [{name: full}]``), recording loss and validation-Dice curves, final Dice and
optimizer state size, and checks the issue's targets (met / not met).

    python benchmarks/projectors.py --quick --threads 1 --out results/galore_projectors.json

Threads default to 1: on a shared or oversubscribed CPU, MKL's multi-threaded SVD slows down by up
to ~100x (spinning threads), which would exaggerate the sketches' advantage.

Shapes are ``nn.Linear`` weights ``[out, in]``. Hiera-L (SAM2 / SAM2.1 Large trunk): embed dim 144,
stages (2, 6, 36, 4), widths 144/288/576/1152, MLP ratio 4; the first block of a stage maps the
previous width ``c/2`` to ``c`` (``attn.qkv`` ``[3c, c/2]`` and a skip ``proj`` ``[c, c/2]``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from machine import machine_info

from medpeft.optim.projectors import (
    captured_energy,
    compute_basis,
    effective_rank,
    make_generator,
    resolve_side,
)

METHODS: tuple[str, ...] = ("svd", "srft", "gaussian")


@dataclass(frozen=True)
class Layer:
    """One weight shape of a model; ``count`` is how many such matrices the encoder has."""

    model: str
    layer: str
    shape: tuple[int, int]
    count: int
    quick: bool = True


def _vit(model: str, width: int, depth: int, quick_all: bool) -> list[Layer]:
    return [
        Layer(model, "attn.qkv", (3 * width, width), depth),
        Layer(model, "attn.proj", (width, width), depth, quick_all),
        Layer(model, "mlp.lin1", (4 * width, width), depth),
        Layer(model, "mlp.lin2", (width, 4 * width), depth, quick_all),
    ]


def _hiera_stage(model: str, stage: int, width: int, depth: int, quick: bool) -> list[Layer]:
    half = width // 2
    return [
        Layer(model, f"s{stage}.attn.qkv", (3 * width, width), depth - 1, quick),
        Layer(model, f"s{stage}.attn.proj", (width, width), depth, quick),
        Layer(model, f"s{stage}.mlp.layers.0", (4 * width, width), depth, quick),
        Layer(model, f"s{stage}.mlp.layers.1", (width, 4 * width), depth, False),
        Layer(model, f"s{stage}[0].attn.qkv", (3 * width, half), 1, False),
        Layer(model, f"s{stage}[0].proj", (width, half), 1, False),
    ]


LAYERS: list[Layer] = [
    *_vit("SAM ViT-B", 768, 12, True),
    *_vit("SAM ViT-H", 1280, 32, False),
    *_hiera_stage("SAM2 Hiera-L", 3, 576, 36, False),
    *_hiera_stage("SAM2 Hiera-L", 4, 1152, 4, True),
]


def spectrum(k: int, spec: str) -> torch.Tensor:
    """Singular values ``s_1..s_k``: ``power:a`` gives ``i^-a``, ``exp:t`` gives ``exp(-(i-1)/t)``."""
    kind, _, value = spec.partition(":")
    i = torch.arange(1, k + 1, dtype=torch.float64)
    if kind == "power":
        return i ** -float(value or 1.0)
    if kind == "exp":
        return torch.exp(-(i - 1) / float(value or 64.0))
    raise ValueError(f"unknown spectrum {spec!r}; use power:<a> or exp:<t>")


def decaying_matrix(shape: tuple[int, int], spec: str, seed: int = 0) -> torch.Tensor:
    """Stand-in gradient ``U diag(s) V^T`` (fp32) with Haar-random orthonormal factors."""
    m, n = shape
    k = min(m, n)
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=gen))
    return (u * spectrum(k, spec).float()) @ v.T


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_refresh(
    grad: torch.Tensor, method: str, rank: int, power_iters: int, repeats: int, name: str
) -> tuple[float, torch.Tensor]:
    """Median seconds of one refresh (seeding included), and the basis of the last repeat."""
    times = []
    basis = torch.empty(0)
    for rep in range(repeats):
        _sync(grad.device)
        start = time.perf_counter()
        basis = compute_basis(grad, rank, method, "auto", power_iters, generator=make_generator(0, rep, name))
        _sync(grad.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), basis


def bench_refresh(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per (layer shape, method): median refresh time, speed-up and energy vs the SVD."""
    device = torch.device(args.device)
    layers = [layer for layer in LAYERS if layer.quick or not args.quick]
    rows: list[dict[str, Any]] = []
    for li, layer in enumerate(layers):
        grad = decaying_matrix(layer.shape, args.spectrum, seed=li).to(device)
        side = resolve_side(layer.shape)
        name = f"{layer.model}/{layer.layer}"
        if device.type == "cuda":  # warm up kernels / workspaces once per shape
            for method in METHODS:
                compute_basis(grad, args.rank, method, power_iters=args.power_iters)
        results = {}
        for method in METHODS:
            seconds, basis = time_refresh(grad, method, args.rank, args.power_iters, args.repeats, name)
            results[method] = (seconds, captured_energy(grad, basis, side))
        svd_s, svd_e = results["svd"]
        for method, (seconds, energy) in results.items():
            rows.append(
                {
                    **asdict(layer),
                    "side": side,
                    "method": method,
                    "power_iters": 0 if method == "svd" else args.power_iters,
                    "seconds": seconds,
                    "speedup_vs_svd": svd_s / seconds,
                    "energy": energy,
                    "energy_vs_svd": energy / svd_e,
                }
            )
        print(f"  done {name} {layer.shape}", file=sys.stderr, flush=True)
    return rows


def model_totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seconds to refresh every benchmarked matrix of each model once (``count`` x per-layer time)."""
    totals: dict[tuple[str, str], float] = {}
    for row in rows:
        key = (row["model"], row["method"])
        totals[key] = totals.get(key, 0.0) + row["count"] * row["seconds"]
    return [{"model": m, "method": k, "seconds": s} for (m, k), s in totals.items()]


TRAIN_RUNS: tuple[tuple[str, str | None], ...] = (
    ("adamw", None),
    ("galore-svd", "svd"),
    ("galore-srft", "srft"),
)
ATTN_TARGET = "attn"  # the backbone's attention projections (symbolic target)
DEFAULT_TRAIN_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "kvasir-seg"


def matrix_state_numel(shape: tuple[int, int], rank: int | None) -> int:
    """Optimizer state numbers of one ``[m, n]`` matrix: AdamW (``rank`` None) ``2 m n``; GaLore
    ``2 r max(m, n) + r min(m, n)`` (moments projected on the smaller side, plus the basis)."""
    m, n = shape
    if rank is None:
        return 2 * m * n
    r = effective_rank(shape, rank)
    return 2 * r * max(m, n) + r * min(m, n)


def attention_state_share(rank: int) -> list[dict[str, Any]]:
    """GaLore / AdamW state of the encoder attention ``qkv`` + ``proj`` weights of SAM ViT-B and ViT-H."""
    out = []
    for model in ("SAM ViT-B", "SAM ViT-H"):
        layers = [la for la in LAYERS if la.model == model and la.layer in ("attn.qkv", "attn.proj")]
        galore = sum(la.count * matrix_state_numel(la.shape, rank) for la in layers)
        adamw = sum(la.count * matrix_state_numel(la.shape, None) for la in layers)
        out.append({"model": model, "rank": rank, "galore": galore, "adamw": adamw, "share": galore / adamw})
    return out


def _subset_split(root: Path, n_train: int, n_val: int, seed: int, path: Path) -> Path:
    """Write a split file with a seeded random subset of ``n_train`` + ``n_val`` images of ``root``."""
    from medpeft.data.readers import read_dataset
    from medpeft.data.splits import save_split_file

    records, _ = read_dataset(root)
    if n_train + n_val > len(records):
        raise SystemExit(f"{root} has {len(records)} images, fewer than --train-images + --val-images")
    ordered = sorted(records, key=lambda r: str(r.image))
    order = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(seed)).tolist()
    pick = [ordered[i] for i in order[: n_train + n_val]]
    save_split_file({"train": pick[:n_train], "val": pick[n_train:], "test": []}, path)
    return path


def _train_config(
    args: argparse.Namespace, root: Path, split: Path, out: Path, projector: str | None, seed: int = 0
) -> Any:
    from medpeft.config import parse_config

    optimizer: dict[str, Any] = {"name": "adamw"}
    if projector is not None:
        optimizer = {
            "name": "galore_adamw",
            "projector": projector,
            "rank": args.train_rank,
            "update_gap": args.train_gap,
            "scale": 0.25,
            "targets": [ATTN_TARGET],
        }
    return parse_config(
        {
            "model": {"base": args.train_model, "image_size": args.train_size},
            "data": {"root": str(root), "split_file": str(split)},
            "prompts": {"train_modes": {"box": 0.5, "point": 0.5}, "eval_mode": "box"},
            "adapters": [{"name": "full"}],
            "optimizer": optimizer,
            "train": {
                "output_dir": str(out),
                "epochs": args.train_epochs,
                "batch_size": args.train_batch,
                "lr": args.train_lr,
                "warmup_steps": 0,
                "schedule": "cosine",
                "log_every": 10**6,
                "seed": seed,
                "cpu": args.device == "cpu",
            },
        },
        source="benchmark",
    )


def _state_sizes(cfg: Any, labels: list[str]) -> dict[str, int]:
    """State numbers (all trainable tensors, and the GaLore-covered matrices alone) vs plain AdamW."""
    from medpeft.adapters.targets import weight_pattern
    from medpeft.engine.build import build_model
    from medpeft.engine.report import optimizer_state_sizes

    model, _ = build_model(cfg, labels)
    state, adamw, optimizer = optimizer_state_sizes(model, cfg)
    covered = [p for g in optimizer.param_groups if g.get("galore") for p in g["params"]]
    rank = cfg.optimizer.rank if covered else None
    if not covered:  # AdamW: the same matrices GaLore would cover, for comparison
        attn = weight_pattern(model, ATTN_TARGET, "benchmark")
        covered = [p for n, p in model.named_parameters() if p.requires_grad and re.search(attn, n)]
    return {
        "state": state,
        "adamw": adamw,
        "covered_state": sum(matrix_state_numel(tuple(p.shape), rank) for p in covered),
        "covered_adamw": sum(matrix_state_numel(tuple(p.shape), None) for p in covered),
    }


def training_curves(args: argparse.Namespace) -> dict[str, Any] | None:
    """Short fine-tunes with AdamW, GaLore-SVD and GaLore-SRFT (same seed, steps and data).

    Full fine-tuning (``adapters: [{name: full}]``) of a random-init preset on a seeded subset of
    Kvasir-SEG; GaLore projects the encoder attention ``qkv`` / ``proj`` weights. Returns loss and
    validation-Dice curves, final Dice, wall time and optimizer state size per run, or ``None``
    (with a message) when the data is absent or ``--skip-training`` is given.
    """
    import tempfile

    from medpeft.engine.trainer import train

    if args.skip_training:
        return None
    root = Path(args.train_data)
    if not (root / "images").is_dir():
        print(
            f"# training part skipped: {root} is absent (Kvasir-SEG lives at ../shared/data)", file=sys.stderr
        )
        return None
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="medpeft-galore-bench-") as tmp:
        split = _subset_split(root, args.train_images, args.val_images, 0, Path(tmp) / "split.json")
        for seed in range(args.train_seeds):
            for name, projector in TRAIN_RUNS:
                if name not in args.train_runs:
                    continue
                cfg = _train_config(args, root, split, Path(tmp) / f"{name}-{seed}", projector, seed)
                start = time.perf_counter()
                result = train(cfg, progress=False)
                seconds = time.perf_counter() - start
                runs.setdefault(name, {"seeds": []})["seeds"].append(
                    _run_summary(args, cfg, result, projector, seconds)
                )
                print(
                    f"  trained {name} seed {seed}: {result.steps} steps in {seconds:.0f} s, "
                    f"final Dice {runs[name]['seeds'][-1]['final_dice']:.4f}",
                    file=sys.stderr,
                    flush=True,
                )
    for run in runs.values():  # seed 0's curves at top level; Dice figures as means over seeds
        seeds = run.pop("seeds")
        run.update(seeds[0])
        for key in ("final_dice", "best_dice", "last3_dice", "seconds"):
            vals = [r[key] for r in seeds if r[key] is not None]
            run[key] = statistics.fmean(vals) if vals else None
            run[f"{key}_std"] = statistics.pstdev(vals) if len(vals) > 1 else 0.0
        run["final_dice_seeds"] = [r["final_dice"] for r in seeds]
    config = {
        "data": str(root),
        "model": args.train_model,
        "image_size": args.train_size,
        "train_images": args.train_images,
        "val_images": args.val_images,
        "epochs": args.train_epochs,
        "batch_size": args.train_batch,
        "lr": args.train_lr,
        "seeds": args.train_seeds,
        "schedule": "cosine, no warm-up",
        "prompts": "train box/point 50/50, validation box",
        "adapters": "full",
        "galore": {
            "rank": args.train_rank,
            "update_gap": args.train_gap,
            "scale": 0.25,
            "targets": ATTN_TARGET,
        },
    }
    return {"config": config, "runs": runs}


def _run_summary(
    args: argparse.Namespace, cfg: Any, result: Any, projector: str | None, seconds: float
) -> dict[str, Any]:
    """Curves and figures of one training run."""
    losses = [(int(h["step"]), float(h["loss"])) for h in result.history if "loss" in h]
    dice = [(int(h["step"]), float(h["val_dice"])) for h in result.history if "val_dice" in h]
    per_epoch = math.ceil(args.train_images / args.train_batch)
    return {
        "projector": projector,
        "steps": result.steps,
        "seconds": seconds,
        "loss": losses,
        "val_dice": dice,
        "final_dice": dice[-1][1] if dice else None,
        "best_dice": max(d for _, d in dice) if dice else None,
        "last3_dice": statistics.fmean(d for _, d in dice[-3:]) if dice else None,
        "first_epoch_loss": statistics.fmean(v for _, v in losses[:per_epoch]),
        "last_epoch_loss": statistics.fmean(v for _, v in losses[-per_epoch:]),
        "state_numel": _state_sizes(cfg, ["foreground"]),
    }


def check_targets(
    rows: list[dict[str, Any]], training: dict[str, Any] | None, rank: int
) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and met / not met (``None``: not measured)."""
    out = []
    vit = [r for r in rows if r["model"] in ("SAM ViT-B", "SAM ViT-H") and r["method"] == "srft"]
    if vit:
        worst = min(vit, key=lambda r: r["speedup_vs_svd"])
        measured = {(r["model"], r["layer"]) for r in vit}
        missing = [
            f"{la.model} {la.layer}"
            for la in LAYERS
            if la.model in ("SAM ViT-B", "SAM ViT-H") and (la.model, la.layer) not in measured
        ]
        out.append(
            {
                "target": "SRFT refresh >= 30x faster than SVD on every ViT-B/ViT-H shape",
                "measured": f"min {worst['speedup_vs_svd']:.1f}x ({worst['model']} {worst['layer']}) over "
                f"{len(vit)} shapes"
                + (f"; not measured (drop --quick): {', '.join(missing)}" if missing else ""),
                "met": worst["speedup_vs_svd"] >= 30.0,
            }
        )
    shares = attention_state_share(rank)
    out.append(
        {
            "target": "optimizer state of covered weights <= 30% of AdamW's",
            "measured": "; ".join(
                f"{s['model']} attn qkv+proj at rank {rank}: {100 * s['share']:.1f}%" for s in shares
            ),
            "met": all(s["share"] <= 0.30 for s in shares),
        }
    )
    runs = training["runs"] if training else {}
    if "galore-srft" in runs and "galore-svd" in runs:
        srft = runs["galore-srft"]["state_numel"]
        out[-1]["measured"] += (
            f"; benchmark run ({training['config']['model']}, rank {training['config']['galore']['rank']}): "
            f"{100 * srft['covered_state'] / srft['covered_adamw']:.1f}%"
        )
        out[-1]["met"] = out[-1]["met"] and srft["covered_state"] <= 0.30 * srft["covered_adamw"]
        gap = runs["galore-srft"]["final_dice"] - runs["galore-svd"]["final_dice"]
        out.append(
            {
                "target": "final Dice of GaLore-SRFT within 2 points of GaLore-SVD",
                "measured": f"SRFT {runs['galore-srft']['final_dice']:.4f} ± {runs['galore-srft']['final_dice_std']:.4f} "
                f"vs SVD {runs['galore-svd']['final_dice']:.4f} ± {runs['galore-svd']['final_dice_std']:.4f} "
                f"({100 * gap:+.2f} points; not more than 2 points below SVD: {'yes' if gap >= -0.02 else 'no'}; "
                f"mean ± std over {training['config']['seeds']} seed(s), {training['config']['val_images']} validation images)",
                "met": abs(gap) <= 0.02,
                "met_one_sided": gap >= -0.02,
            }
        )
    else:
        out.append(
            {
                "target": "final Dice of GaLore-SRFT within 2 points of GaLore-SVD",
                "measured": "not run",
                "met": None,
            }
        )
    return out


def print_training(training: dict[str, Any]) -> None:
    runs = training["runs"]
    print()
    print(f"training: {json.dumps(training['config'])}")
    header = (
        f"{'run':<12} {'steps':>5} {'loss ep1':>9} {'loss last':>9} {'final Dice':>10} {'best Dice':>9} "
        f"{'last-3 Dice':>11} {'s':>6} {'state':>10} {'% AdamW':>8} {'covered':>9} {'% AdamW':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, r in runs.items():
        st = r["state_numel"]
        print(
            f"{name:<12} {r['steps']:>5} {r['first_epoch_loss']:>9.4f} {r['last_epoch_loss']:>9.4f} "
            f"{r['final_dice']:>10.4f} {r['best_dice']:>9.4f} {r['last3_dice']:>11.4f} {r['seconds']:>6.0f} {st['state']:>10,} "
            f"{100 * st['state'] / st['adamw']:>7.1f}% {st['covered_state']:>9,} "
            f"{100 * st['covered_state'] / st['covered_adamw']:>7.1f}%"
        )
    print("validation Dice by epoch:")
    for name, r in runs.items():
        print(f"  {name:<12} " + " ".join(f"{d:.3f}" for _, d in r["val_dice"]))


def print_targets(targets: list[dict[str, Any]]) -> None:
    print()
    print("targets:")
    for t in targets:
        status = "not measured" if t["met"] is None else ("met" if t["met"] else "NOT met")
        print(f"  [{status}] {t['target']}: {t['measured']}")


def print_table(rows: list[dict[str, Any]], totals: list[dict[str, Any]]) -> None:
    header = f"{'model':<13} {'layer':<22} {'shape':>11} {'method':<9} {'ms':>9} {'x svd':>7} {'energy':>7} {'E/E_svd':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        shape = "x".join(map(str, row["shape"]))
        print(
            f"{row['model']:<13} {row['layer']:<22} {shape:>11} {row['method']:<9} "
            f"{1e3 * row['seconds']:>9.1f} {row['speedup_vs_svd']:>7.1f} {row['energy']:>7.4f} "
            f"{row['energy_vs_svd']:>8.4f}"
        )
    print()
    print("one refresh of all benchmarked layers of a model (count x per-layer time):")
    for t in totals:
        print(f"  {t['model']:<13} {t['method']:<9} {t['seconds']:>8.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--power-iters", type=int, default=0, help="power iterations of the sketches")
    parser.add_argument("--spectrum", default="power:1.0", help="power:<a> (s_i = i^-a) or exp:<t>")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, --quick 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch's)")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    parser.add_argument("--out", type=Path, default=Path("results/projectors.json"))
    parser.add_argument("--skip-refresh", action="store_true", help="only the training comparison")
    train = parser.add_argument_group("training comparison (AdamW vs GaLore-SVD vs GaLore-SRFT)")
    train.add_argument("--skip-training", action="store_true", help="only the refresh benchmark")
    train.add_argument("--train-data", type=Path, default=DEFAULT_TRAIN_DATA, help="Kvasir-SEG folder")
    train.add_argument(
        "--train-model",
        default="sam-mini",
        help="base: a SAM preset (random init) or a model dir / checkpoint",
    )
    train.add_argument("--train-size", type=int, default=128, help="input size (multiple of 16)")
    train.add_argument("--train-images", type=int, default=160, help="training images (seeded subset)")
    train.add_argument("--val-images", type=int, default=40, help="validation images (seeded subset)")
    train.add_argument("--train-epochs", type=int, default=12)
    train.add_argument("--train-batch", type=int, default=4)
    train.add_argument("--train-lr", type=float, default=1e-3)
    train.add_argument("--train-seeds", type=int, default=1, help="seeds per run (init and data order)")
    train.add_argument(
        "--train-rank", type=int, default=32, help="GaLore rank (sam-mini width 192 ~ ViT-B 768 at 128)"
    )
    train.add_argument(
        "--train-gap", type=int, default=20, help="GaLore update_gap (steps between refreshes)"
    )
    train.add_argument(
        "--train-runs",
        type=lambda v: v.split(","),
        default=[name for name, _ in TRAIN_RUNS],
        help="comma-separated subset of " + ",".join(name for name, _ in TRAIN_RUNS),
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.threads:
        torch.set_num_threads(args.threads)

    config = {
        "rank": args.rank,
        "power_iters": args.power_iters,
        "spectrum": args.spectrum,
        "repeats": args.repeats,
        "quick": args.quick,
        "device": args.device,
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        **machine_info(),
    }
    rows: list[dict[str, Any]] = []
    totals: list[dict[str, Any]] = []
    if not args.skip_refresh:
        print(f"# refresh benchmark: {json.dumps(config)}", file=sys.stderr, flush=True)
        rows = bench_refresh(args)
        totals = model_totals(rows)
        print_table(rows, totals)
    training = training_curves(args)
    if training:
        print_training(training)
    targets = check_targets(rows, training, args.rank)
    print_targets(targets)
    result = {
        "config": config,
        "refresh": rows,
        "model_totals": totals,
        "training": training,
        "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
