"""Benchmark of S-SAM on SAM ViT-B: training-step time and peak memory per SVD mode, against LoRA and
LayerNorm tuning; inference latency of the merged model against the base; and, per encoder matrix,
which SVD path (factorised or rebuild) is faster against the one ``mode: auto`` picks.

Model: ``sam-vit-base`` (random init, nothing downloaded) at ``--image-size`` (256), a learned class
prompt, one class, automatic mode (the class token is the only prompt), batch ``--batch`` (2) of
fixed synthetic images and masks. Training configurations:

- ``ssam_factorised`` / ``ssam_rebuild`` / ``ssam_auto``: S-SAM (``svd`` + ``layernorm`` + ``pos_embed``),
  with ``medpeft.adapters.svd.set_svd_mode`` set to each mode;
- ``lora_r4``: LoRA r=4 on ``attn.qkv``; ``layernorm``: the encoder's LayerNorms only.

A training step is forward, Dice+BCE loss, backward, gradient clipping (as the trainer does), AdamW
step and ``zero_grad``. Times: all configurations live in one process and are stepped round-robin
(the starting configuration rotates each round), so a changing load on a shared CPU affects them
alike; one warm-up round is dropped, the median of ``--steps`` rounds is reported. Memory: each
configuration also runs in a fresh subprocess that builds the model and optimizer, resets the
kernel's peak-RSS mark (``/proc/self/clear_refs``), runs a warm-up and one more step and reads the
peak (``VmHWM``); ``rss0`` is the RSS just before the first step (weights, SVD factors, optimizer),
``peak`` the process peak during training, ``train`` = ``peak - rss0``.

Inference: the base model, S-SAM merged into plain layers (``merge_methods``) and S-SAM unmerged
(``auto``), called round-robin on the same input under ``torch.no_grad``; medians of ``--reps``.

    python benchmarks/ssam_speed.py --quick --out results/ssam_speed.json

``--threads`` defaults to 1: on a shared CPU, more intra-op threads make timings erratic.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from machine import machine_info
from process_memory import (
    current_rss_mib,
    emit_result,
    peak_rss_mib,
    release_free_heap,
    reset_peak_rss,
    run_marked_worker,
)
from torch import nn

SSAM: list[dict[str, Any]] = [{"name": "svd"}, {"name": "layernorm"}, {"name": "pos_embed"}]
CONFIGS: dict[str, tuple[list[dict[str, Any]], str | None]] = {
    "ssam_factorised": (SSAM, "factorised"),
    "ssam_rebuild": (SSAM, "rebuild"),
    "ssam_auto": (SSAM, "auto"),
    "lora_r4": ([{"name": "lora", "r": 4, "targets": "qkv"}], None),
    "layernorm": ([{"name": "layernorm"}], None),
}
TARGETS = {
    "step_vs_lora": 1.2,  # S-SAM step time at most 1.2x LoRA's
    "rebuild_speedup": 1.7,  # S-SAM at least 1.7x faster than rebuild
    "merged_inference": 0.02,  # merged inference within 2% of the base model
    "memory_vs_lora": 1.2,  # peak memory at most 1.2x LoRA's
}
# ---------------------------------------------------------------- building and stepping


def build(name: str, args: argparse.Namespace) -> nn.Module:
    """The segmenter of configuration ``name`` (``ssam_*`` share the S-SAM build; the mode is set here)."""
    from medpeft.adapters.svd import set_svd_mode
    from medpeft.config import parse_config
    from medpeft.engine.build import build_model

    adapters, mode = CONFIGS[name] if name in CONFIGS else ([], None)
    cfg = parse_config(_config_dict(args, adapters))
    model, _ = build_model(cfg, ["target"])
    if mode is not None:
        set_svd_mode(model, mode)  # type: ignore[arg-type]
    return model


def _config_dict(args: argparse.Namespace, adapters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": {"base": args.base, "image_size": args.image_size, "class_prompt": "learned"},
        "prompts": {"train_modes": {"auto": 1.0}},
        "adapters": adapters,
    }


def synthetic_batch(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Images, a rectangular mask per image and automatic-mode prompts (class token only)."""
    from medpeft.models.prompts import Prompts

    b, s = args.batch, args.image_size
    images = torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(b, 1, s, s)
    masks[:, :, s // 4 : 3 * s // 4, s // 3 : 2 * s // 3] = 1.0
    return images, masks, Prompts(class_ids=torch.zeros(b, 1, dtype=torch.long))


class Stepper:
    """One configuration's model, optimizer and a ``step()`` returning (forward, backward, optimizer) seconds."""

    def __init__(self, model: nn.Module, args: argparse.Namespace, mode: str | None = None) -> None:
        from train_step import synthetic_batch as task_batch

        from medpeft.config import parse_config
        from medpeft.engine.build import build_optimizer
        from medpeft.tasks.base import make_task

        self.cfg = parse_config(_config_dict(args, []))
        self.model, self.mode = model.train(), mode
        self.optimizer = build_optimizer(self.cfg, model)
        self.task = make_task(self.cfg)  # the trainer's loss, in automatic mode (class token only)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.batch = task_batch("segmentation", args.batch, args.image_size)

    def step(self) -> tuple[float, float, float]:
        from medpeft.adapters.svd import set_svd_mode
        from medpeft.engine.step import training_loss

        if self.mode is not None:
            set_svd_mode(self.model, self.mode)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        loss, _ = training_loss(self.task, [], self.model, self.batch, 0, 0)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.max_grad_norm or float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, time.perf_counter() - t2


def measure_memory(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of training configuration ``name`` (run inside a fresh worker process)."""
    from medpeft.engine.report import trainable_share

    t0 = time.perf_counter()
    model = build(name, args)
    build_s = time.perf_counter() - t0
    stepper = Stepper(model, args, CONFIGS[name][1])
    trainable, total = trainable_share(model)
    gc.collect()
    release_free_heap()  # the float64 SVD leaves ~170 MiB of freed heap that RSS would count
    reset = reset_peak_rss()
    rss0 = current_rss_mib()
    times = [sum(stepper.step()) for _ in range(2)]  # warm-up (allocates AdamW state) + one step
    peak = peak_rss_mib()
    return {
        "config": name,
        "trainable": trainable,
        "total": total,
        "build_s": build_s,
        "rss0_mib": rss0,
        "peak_mib": peak,
        "train_peak_mib": peak - rss0,
        "peak_reset": reset,
        "worker_step_s": times[-1],
    }


def run_worker(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """``measure_memory(name)`` in a fresh Python process."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--threads", str(args.threads)]
    cmd += ["--base", args.base, "--image-size", str(args.image_size), "--batch", str(args.batch)]
    return run_marked_worker(cmd, {"config": name})


def round_robin(
    calls: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1, verbose: bool = True
) -> dict[str, list[Any]]:
    """Call each entry once per round, rotating the starting entry; drop the first ``warmup`` rounds."""
    names = list(calls)
    out: dict[str, list[Any]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            result = calls[name]()
            if r >= warmup:
                out[name].append(result)
        if verbose:
            print(f"  round {r + 1}/{warmup + rounds} done", file=sys.stderr, flush=True)
    return out


def auto_choices(model: nn.Module, images: torch.Tensor, prompts: Any) -> list[dict[str, Any]]:
    """What ``mode: auto`` picks for every SVD layer on this input (one no-grad forward, via hooks)."""
    from medpeft.adapters.svd import svd_layers

    seen: list[dict[str, Any]] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: Any, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0]
        n = x.numel() // x.shape[-1]
        seen.append({"layer": names[module], "tokens": n, "factorised": bool(module.use_factorised(n))})

    handles = [layer.register_forward_pre_hook(hook) for layer in svd_layers(model)]
    try:
        with torch.no_grad():
            model(images, prompts)
    finally:
        for h in handles:
            h.remove()
    return seen


# ---------------------------------------------------------------- per-layer paths


def layer_paths(args: argparse.Namespace, reps: int) -> list[dict[str, Any]]:
    """Per ViT-B matrix shape and the token count it sees at this input: seconds of the factorised and
    rebuild paths and of a plain frozen ``nn.Linear`` (``dense``, what LoRA's base layer costs), for a
    training call (forward + backward to the input and the spectrum) and an inference call (no grad)."""
    from medpeft.adapters.svd import SVDLinear

    width, mlp, window, grid = 768, 3072, 14, args.image_size // 16
    padded = -(-grid // window) * window
    windowed, full = args.batch * padded * padded, args.batch * grid * grid
    cases = [
        ("attn.qkv (windowed)", 3 * width, width, windowed),
        ("attn.qkv (global)", 3 * width, width, full),
        ("attn.proj (windowed)", width, width, windowed),
        ("attn.proj (global)", width, width, full),
        ("mlp.lin1", mlp, width, full),
        ("mlp.lin2", width, mlp, full),
    ]
    rows = []
    for label, d, k, n in cases:
        torch.manual_seed(0)
        dense = nn.Linear(k, d).requires_grad_(False)
        layer = SVDLinear(copy.deepcopy(dense))
        x = torch.randn(n, k, requires_grad=True)
        g = torch.randn(n, d)

        def run(
            mode: str,
            train: bool,
            layer: SVDLinear = layer,
            dense: nn.Linear = dense,
            x: torch.Tensor = x,
            g: torch.Tensor = g,
        ) -> float:
            module: nn.Module = dense if mode == "dense" else layer
            layer.mode = mode if mode != "dense" else "auto"
            with torch.set_grad_enabled(train):
                t = time.perf_counter()
                out = module(x)
                if train:
                    out.backward(g)
                elapsed = time.perf_counter() - t
            layer.scale.grad = layer.shift.grad = x.grad = None
            return elapsed

        calls = {
            f"{'train' if train else 'infer'}_{mode}": (lambda mode=mode, train=train: run(mode, train))
            for train in (True, False)
            for mode in ("dense", "factorised", "rebuild")
        }
        med = {key: statistics.median(v) for key, v in round_robin(calls, reps, verbose=False).items()}
        layer.mode = "auto"
        r = min(d, k)
        rows.append(
            {
                "layer": label,
                "shape": [d, k],
                "tokens": n,
                "auto_factorised": layer.use_factorised(n),
                # forward + backward FLOPs: factorised 2Nr(D+K); rebuild 2DKr + 3NDK (W', y, dx, dW')
                "train_rule_factorised": 2 * n * r * (d + k) < 2 * d * k * r + 3 * n * d * k,
                **med,
            }
        )
    return rows


# ---------------------------------------------------------------- the run


def training_times(
    args: argparse.Namespace,
) -> tuple[dict[str, dict[str, float]], nn.Module, list[dict[str, Any]]]:
    """Round-robin step times of every configuration; also returns the S-SAM model and auto's choices."""
    t0 = time.perf_counter()
    ssam = build("ssam_auto", args)
    ssam_build_s = time.perf_counter() - t0
    images, _, prompts = synthetic_batch(args)
    choices = auto_choices(ssam.eval(), images, prompts)
    steppers = {name: Stepper(ssam, args, CONFIGS[name][1]) for name in CONFIGS if name.startswith("ssam_")}
    steppers.update(
        {name: Stepper(build(name, args), args) for name in CONFIGS if not name.startswith("ssam_")}
    )
    # the three S-SAM modes share one model; each stepper has its own AdamW state (values do not affect time)
    raw = round_robin({n: s.step for n, s in steppers.items()}, args.steps)
    times = {}
    for name, samples in raw.items():
        fwd, bwd, opt = (list(col) for col in zip(*samples, strict=True))
        totals = [a + b + c for a, b, c in samples]
        times[name] = {
            "step_s": statistics.median(totals),
            "forward_s": statistics.median(fwd),
            "backward_s": statistics.median(bwd),
            "optimizer_s": statistics.median(opt),
            "trainable": sum(p.numel() for p in steppers[name].params),
            "steps_s": totals,
        }
    times["ssam_auto"]["build_s"] = ssam_build_s
    for s in steppers.values():
        s.optimizer.zero_grad(set_to_none=True)
    del steppers
    gc.collect()
    return times, ssam, choices


def structure(model: nn.Module) -> list[tuple[Any, ...]]:
    """Module types and every parameter's name, shape, dtype and strides: what inference speed depends on."""
    modules = [(name, type(m).__name__) for name, m in model.named_modules()]
    params = [(n, tuple(p.shape), p.dtype, p.stride()) for n, p in model.named_parameters()]
    return modules + params


@torch.no_grad()
def inference_times(ssam: nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """Round-robin latency: base model, merged S-SAM, unmerged S-SAM (auto)."""
    from medpeft.adapters.svd import set_svd_mode, svd_layers
    from medpeft.config import parse_config
    from medpeft.engine.build import merge_methods

    gen = torch.Generator().manual_seed(1)
    for layer in svd_layers(ssam):  # a trained-looking spectrum (values do not affect the speed)
        layer.scale.copy_(1 + 0.1 * torch.randn(layer.scale.shape, generator=gen))
        layer.shift.copy_(0.01 * torch.randn(layer.shift.shape, generator=gen))
    set_svd_mode(ssam, "auto")
    unmerged = ssam.eval()
    merged = merge_methods(copy.deepcopy(unmerged), parse_config(_config_dict(args, SSAM))).eval()
    assert not svd_layers(merged)
    base = build("base", args).eval()
    images, _, prompts = synthetic_batch(args)
    diff = float((merged(images, prompts) - unmerged(images, prompts)).abs().max())
    same_structure = structure(merged) == structure(base)
    models = {"base": base, "ssam_merged": merged, "ssam_unmerged_auto": unmerged}

    def timed(model: nn.Module) -> Callable[[], float]:
        def call() -> float:
            t = time.perf_counter()
            model(images, prompts)
            return time.perf_counter() - t

        return call

    raw = round_robin({n: timed(m) for n, m in models.items()}, args.reps)
    out: dict[str, Any] = {n: {"latency_s": statistics.median(v), "samples_s": v} for n, v in raw.items()}
    out["merge_max_abs_diff"] = diff
    out["merged_same_structure_as_base"] = same_structure
    return out


def predicted_step_time(
    layers: list[dict[str, Any]], choices: list[dict[str, Any]], lora_step: float
) -> dict[str, Any]:
    """The S-SAM step time the per-layer table predicts: LoRA's step plus, for every SVD layer of the model,
    the extra seconds of its faster path (factorised or rebuild) over a frozen dense layer of that shape
    and token count, i.e. the cost of the extra multiply-adds alone (everything else in the step is the
    same work for both methods)."""
    rows = {(r["layer"].split(" ")[0], r["tokens"]): r for r in layers}
    extra = 0.0
    for c in choices:
        row = rows[(c["layer"].split(".")[-2] + "." + c["layer"].split(".")[-1], c["tokens"])]
        extra += min(row["train_factorised"], row["train_rebuild"]) - row["train_dense"]
    return {
        "lora_step_s": lora_step,
        "extra_s": extra,
        "predicted_s": lora_step + extra,
        "predicted_vs_lora": 1 + extra / lora_step,
    }


def evaluate_targets(
    mem: dict[str, dict[str, Any]], times: dict[str, Any], infer: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each issue target with its measured value and met / not met."""
    lora, rebuild = times["lora_r4"]["step_s"], times["ssam_rebuild"]["step_s"]
    rows = []
    for mode in ("ssam_factorised", "ssam_auto"):
        ratio = times[mode]["step_s"] / lora
        rows.append(
            {
                "target": f"{mode} step <= {TARGETS['step_vs_lora']}x LoRA",
                "value": ratio,
                "met": ratio <= TARGETS["step_vs_lora"],
            }
        )
    for mode in ("ssam_factorised", "ssam_auto"):
        speedup = rebuild / times[mode]["step_s"]
        rows.append(
            {
                "target": f"{mode} >= {TARGETS['rebuild_speedup']}x faster than rebuild",
                "value": speedup,
                "met": speedup >= TARGETS["rebuild_speedup"],
            }
        )
    rel = infer["ssam_merged"]["latency_s"] / infer["base"]["latency_s"] - 1
    rows.append(
        {
            "target": f"merged inference within {100 * TARGETS['merged_inference']:.0f}% of base",
            "value": rel,
            "met": abs(rel) <= TARGETS["merged_inference"],
        }
    )
    if all("peak_mib" in mem.get(n, {}) for n in ("ssam_factorised", "ssam_auto", "lora_r4")):
        for mode in ("ssam_factorised", "ssam_auto"):
            ratio = mem[mode]["peak_mib"] / mem["lora_r4"]["peak_mib"]
            rows.append(
                {
                    "target": f"{mode} peak memory <= {TARGETS['memory_vs_lora']}x LoRA",
                    "value": ratio,
                    "met": ratio <= TARGETS["memory_vs_lora"],
                }
            )
    return rows


def print_layers(rows: list[dict[str, Any]]) -> None:
    """The per-layer table."""
    print("\nPer-layer paths (one SAM ViT-B-shaped layer, seconds): dense = a plain frozen nn.Linear;")
    print("auto = what the current (forward-FLOP) rule picks; train rule = a forward+backward FLOP rule")
    head = (
        f"{'layer':<22}{'N':>6}{'trn dense':>10}{'trn fact':>10}{'trn rebl':>10}{'inf dense':>10}{'inf fact':>10}"
        f"{'inf rebl':>10}{'auto':>12}{'train rule':>12}"
    )
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(
            f"{r['layer']:<22}{r['tokens']:>6}{r['train_dense']:>10.4f}{r['train_factorised']:>10.4f}"
            f"{r['train_rebuild']:>10.4f}{r['infer_dense']:>10.4f}{r['infer_factorised']:>10.4f}"
            f"{r['infer_rebuild']:>10.4f}{'factorised' if r['auto_factorised'] else 'rebuild':>12}"
            f"{'factorised' if r['train_rule_factorised'] else 'rebuild':>12}"
        )


def print_report(result: dict[str, Any]) -> None:
    """Fixed-width tables of everything measured."""
    setup, mem, times, infer = result["setup"], result["memory"], result["training"], result["inference"]
    size = setup["image_size"]
    print(
        f"\nTraining step, {setup['base']} at {size}x{size}, batch {setup['batch']}, {setup['threads']} thread(s), "
        f"median of {setup['steps']}"
    )
    head = (
        f"{'config':<16}{'trainable':>11}{'s/step':>8}{'fwd':>7}{'bwd':>7}{'opt':>7}{'vs LoRA':>9}"
        f"{'rss0 MiB':>10}{'peak MiB':>10}{'train MiB':>10}"
    )
    print(head + "\n" + "-" * len(head))
    lora = times["lora_r4"]["step_s"]
    for name in CONFIGS:
        t, m = times[name], mem.get(name, {})
        mems = (
            f"{m['rss0_mib']:>10.0f}{m['peak_mib']:>10.0f}{m['train_peak_mib']:>10.0f}"
            if "peak_mib" in m
            else f"{m.get('error', 'n/a'):>30}"
        )
        print(
            f"{name:<16}{t['trainable']:>11,}{t['step_s']:>8.2f}{t['forward_s']:>7.2f}{t['backward_s']:>7.2f}"
            f"{t['optimizer_s']:>7.2f}{t['step_s'] / lora:>8.2f}x{mems}"
        )
    print(f"\nInference (no grad), median of {setup['reps']}")
    base = infer["base"]["latency_s"]
    for name in ("base", "ssam_merged", "ssam_unmerged_auto"):
        print(
            f"{name:<22}{infer[name]['latency_s']:>8.3f} s{100 * (infer[name]['latency_s'] / base - 1):>+8.1f}%"
        )
    print(
        f"merged vs unmerged max |logit diff|: {infer['merge_max_abs_diff']:.2e}; merged model has the base's "
        f"exact structure (module types, parameter shapes, dtypes, strides): {infer['merged_same_structure_as_base']}"
    )
    print_layers(result["layers"])
    picks = result["auto_choices"]
    rebuilt = sorted(
        {
            f"{c['layer'].split('vision_encoder.')[-1]} (N={c['tokens']})"
            for c in picks
            if not c["factorised"]
        },
        key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)],
    )
    print(
        f"\nauto in the model: {sum(c['factorised'] for c in picks)}/{len(picks)} layers factorised; rebuild: "
        f"{', '.join(rebuilt) if rebuilt else 'none'}"
    )
    pred = result["step_prediction"]
    print(
        f"\nStep time the per-layer table predicts: LoRA {pred['lora_step_s']:.2f} s + the faster S-SAM path's extra "
        f"over a dense layer, summed over the model's {len(picks)} SVD layers, {pred['extra_s']:.2f} s = "
        f"{pred['predicted_s']:.2f} s = {pred['predicted_vs_lora']:.2f}x LoRA (measured: "
        f"{result['training']['ssam_auto']['step_s'] / pred['lora_step_s']:.2f}x)"
    )
    print("\nTargets")
    for t in result["targets"]:
        print(f"  {'MET    ' if t['met'] else 'NOT MET'}  {t['target']}: {t['value']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=None, help="timed rounds after 1 warm-up (default 5, --quick 3)"
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="timed inference rounds (default 10, --quick 5)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--base", default="sam-vit-base", help="SAM preset (random init)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true", help="no per-configuration memory subprocesses")
    parser.add_argument("--layers-only", action="store_true", help="only the per-layer table (fast)")
    parser.add_argument("--out", type=Path, default=Path("results/ssam_speed.json"))
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = args.steps or (3 if args.quick else 5)
    args.reps = args.reps or (5 if args.quick else 10)
    torch.set_num_threads(args.threads)

    if args.worker:
        emit_result(measure_memory(args.worker, args))
        return 0

    setup = {
        "base": args.base,
        "image_size": args.image_size,
        "batch": args.batch,
        "steps": args.steps,
        "reps": args.reps,
        "threads": torch.get_num_threads(),
        **machine_info(),
    }
    print(f"# ssam speed benchmark: {json.dumps(setup)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    print("per-layer paths ...", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"setup": setup, "layers": layer_paths(args, args.reps)}
    if args.layers_only:
        print_layers(result["layers"])
    else:
        mem: dict[str, dict[str, Any]] = {}
        if not args.skip_memory:
            for name in CONFIGS:
                mem[name] = run_worker(name, args)
                print(
                    f"memory {name}: {mem[name].get('peak_mib', mem[name].get('error'))} MiB "
                    f"({mem[name]['wall_s']:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
        print("training steps (round-robin) ...", file=sys.stderr, flush=True)
        times, ssam, choices = training_times(args)
        print("inference ...", file=sys.stderr, flush=True)
        infer = inference_times(ssam, args)
        result.update(training=times, memory=mem, inference=infer, auto_choices=choices)
        result["targets"] = evaluate_targets(mem, times, infer)
        result["step_prediction"] = predicted_step_time(result["layers"], choices, times["lora_r4"]["step_s"])
        print_report(result)
    result["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
