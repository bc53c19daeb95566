"""Benchmark of GaLore subspace refreshes: exact SVD vs SRFT vs Gaussian sketches.

For the weight shapes of SAM ViT-B, SAM ViT-H and SAM2 Hiera-L (attention qkv/proj and MLP
layers), times one subspace refresh (``compute_basis`` as ``GaLoreAdamW`` calls it: fp32, auto
side, rank ``--rank``; median over repeats) on stand-in gradients with a decaying spectrum
(``U diag(s) V^T``, Haar-random ``U``, ``V``), and reports the speed-up over the SVD and the
fraction of gradient energy kept (``||P P^T G||_F^2 / ||G||_F^2``) relative to the SVD's.

    python benchmarks/projectors.py --quick --out results/projectors.json

On a shared or oversubscribed CPU pass ``--threads 1``: MKL's multi-threaded SVD then slows down
by up to ~100x (spinning threads), which would exaggerate the sketches' advantage.

Shapes are ``nn.Linear`` weights ``[out, in]``. Hiera-L (SAM2 / SAM2.1 Large trunk): embed dim 144,
stages (2, 6, 36, 4), widths 144/288/576/1152, MLP ratio 4; the first block of a stage maps the
previous width ``c/2`` to ``c`` (``attn.qkv`` ``[3c, c/2]`` and a skip ``proj`` ``[c, c/2]``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from medpeft.optim.projectors import captured_energy, compute_basis, make_generator, resolve_side

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


def training_curves(args: argparse.Namespace) -> dict[str, Any] | None:
    """Training-curve comparison of the projectors (loss vs step and wall time) on a real fine-tune.

    Placeholder for the trainer-based part; returns ``None`` until it exists. It receives the parsed
    arguments and returns a JSON-serialisable dict stored under ``"training"`` in the output.
    """
    return None


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
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    parser.add_argument("--out", type=Path, default=Path("results/projectors.json"))
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
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    print(f"# refresh benchmark: {json.dumps(config)}", file=sys.stderr, flush=True)
    rows = bench_refresh(args)
    totals = model_totals(rows)
    print_table(rows, totals)
    result = {"config": config, "refresh": rows, "model_totals": totals, "training": training_curves(args)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
