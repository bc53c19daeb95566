"""Benchmark, part 2 (``python benchmarks/volumetric.py --part 2``): the 3D SegVol-mini foundation trained
here (``configs/foundation_segvol_mini.yaml``, merged into a folder) adapted to subjects it never saw.

1. Adaptation: on subjects held out of the foundation's training (its test split), zero-shot (label-name
   prompts), LoRA, Vector-LoRA, S-SAM (SVD), full fine-tuning and a MONAI 3D U-Net from scratch, each for
   the same steps; 3D Dice on further held-out subjects (zoom-out-zoom-in, text and box prompts), the
   trainable share, training time and peak memory; the 2D slice-wise route of part 1 on the same subjects.
2. Zoom-out-zoom-in against the full-resolution sliding window: seconds, peak memory and Dice per case.
3. Rotation: the Dice drop of LoRA on the block output projections against the same plus the
   SO(3)-steerable side-tuned patch embedding (the reproduction study's adapter).

    python benchmarks/volumetric.py --part 2 --foundation runs/foundation_segvol_mini/base \\
        --jobs 2 --threads 1 --out docs/volumetric_3d.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from process_memory import peak_rss_mib, release_free_heap, reset_peak_rss

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FOUNDATION_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "foundation_segvol_mini.yaml"
METHODS: dict[str, list[dict[str, Any]]] = {
    "lora": [{"name": "lora", "r": 8, "lr": 2e-3}, {"name": "decoder"}],
    "vector_lora": [{"name": "vector_lora", "r_max": 12, "r_min": 4, "lr": 2e-3}, {"name": "decoder"}],
    "svd": [{"name": "svd", "include_patch_embed": True, "lr": 5e-3}, {"name": "decoder"}],
    "full": [{"name": "full"}],
    "unet3d": [{"name": "full"}],
}
ROTATION_METHODS: dict[str, list[dict[str, Any]]] = {
    "lora_out": [{"name": "lora", "targets": "attn_out", "r": 8, "lr": 2e-3}, {"name": "decoder"}],
    "steerable+lora_out": [
        {"name": "steerable", "lr": 2e-3},
        {"name": "lora", "targets": "attn_out", "r": 8, "lr": 2e-3},
        {"name": "decoder"},
    ],
}


def held_out(name: str, n_adapt: int, n_test: int) -> tuple[list[str], list[str]]:
    """Case file names of adaptation and test subjects, all from the foundation's test split of ``name``."""
    from medpeft.config import load_config
    from medpeft.tasks.volume_segmentation import volume_splits

    cfg = load_config(FOUNDATION_CONFIG)
    test = [c for c in volume_splits(cfg).test if c.image.resolve().is_relative_to((SHARED / name).resolve())]
    subjects = list(dict.fromkeys(c.subject for c in test))
    adapt, scored = subjects[:n_adapt], subjects[n_adapt : n_adapt + n_test]
    return [c.image.name for c in test if c.subject in adapt], [
        c.image.name for c in test if c.subject in scored
    ]


def _config(base: str, adapters: list[dict[str, Any]], root: Path, split_file: Path, out: Path, args) -> Any:
    from medpeft.config import parse_config

    return parse_config(
        {
            "model": {"base": base, "image_size": 64, "class_prompt": "learned"},
            "data": {"root": str(root), "split_file": str(split_file), "zoom_in": 0.4},
            "prompts": {
                "train_modes": {"text": 0.35, "box": 0.3, "point": 0.15, "text+box": 0.2},
                "eval_mode": "text",
                "n_pos_points": 2,
                "n_neg_points": 1,
            },
            "adapters": adapters,
            "train": {
                "output_dir": str(out),
                "epochs": 1000,
                "max_steps": args.steps,
                "batch_size": 2,
                "lr": 5e-4,
                "warmup_steps": 20,
                "seed": args.seed,
            },
        }
    )


def _adapt(cfg: Any) -> tuple[Any, dict[str, Any]]:
    """Train (unless zero steps), return the model and training figures."""
    from medpeft.engine.build import build_model
    from medpeft.engine.report import trainable_share
    from medpeft.engine.restore import load_trained
    from medpeft.engine.trainer import train

    release_free_heap()
    reset_peak_rss()
    t0 = time.perf_counter()
    if cfg.train.max_steps:
        result = train(cfg, overwrite=True, progress=False)
        model, _, _ = load_trained(result.run_dir)
        built, _ = build_model(cfg, list(model.label_names))  # for the counts before any merge
    else:
        from medpeft.tasks.base import make_task

        labels = make_task(cfg).splits().label_names
        model, _ = build_model(cfg, labels)
        built = model.requires_grad_(False)  # zero-shot: nothing trains
    trainable, total = trainable_share(built)
    return model, {
        "train_seconds": time.perf_counter() - t0,
        "train_peak_mib": peak_rss_mib(),
        "trainable": trainable,
        "total": total,
        "trainable_share": trainable / total,
    }


def _score(model: Any, cases: list, table: dict[int, str], out: Path, **kw: Any) -> dict[str, Any]:
    from medpeft.engine.volumes import evaluate_volumes

    release_free_heap()
    reset_peak_rss()
    summary = evaluate_volumes(model, cases, table, out, **kw)
    summary["peak_mib"] = peak_rss_mib()
    return summary


def run_dataset(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from volumetric import run as run_2d

    from medpeft.data.volume_io import read_volume_dataset

    torch.set_num_threads(args.threads)
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    n_adapt, n_test = (40, 10) if name == "msd-hippocampus" else (15, 5)
    adapt, test = held_out(name, n_adapt, n_test)
    split_file = work / "split.json"
    split_file.write_text(json.dumps({"train": adapt, "val": [], "test": test}))
    cases, table = read_volume_dataset(SHARED / name)
    test_cases = [c for c in cases if c[0].name in set(test)]
    rows: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    for method in ["zero_shot", *METHODS]:
        base = "unet3d" if method == "unet3d" else str(args.foundation)
        adapters = METHODS.get(method, [{"name": "decoder"}])
        cfg = _config(base, adapters, SHARED / name, split_file, work / method, args)
        if method == "zero_shot":
            cfg.train.__dict__["max_steps"] = 0
        print(f"[volumetric 3D] {name}: {method}", flush=True)
        model, figures = _adapt(cfg)
        modes = ["text"] if method == "unet3d" else ["text", "box"]
        summary = _score(model, test_cases, table, work / method / "eval", prompt_modes=modes)
        models[method] = model
        rows.append(
            {
                "dataset": name,
                "method": method,
                "adapt_cases": len(adapt),
                "test_cases": len(test_cases),
                "steps": cfg.train.max_steps,
                **figures,
                "dice_text": summary["prompts"]["text"]["mean_dice"],
                "dice_box": summary["prompts"].get("box", {}).get("mean_dice"),
                "hd95_text": summary["mean"]["hd95"],
                "seconds_per_case": summary["prompts"]["text"]["seconds_per_case"],
                "eval_peak_mib": summary["peak_mib"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    adapt_cases = [c for c in cases if c[0].name in set(adapt)]
    two_d = run_2d(
        name,
        argparse.Namespace(**{**vars(args), "train_subjects": len(adapt_cases)}),
        cases=(adapt_cases, test_cases, table),
    )
    rows.append(
        {
            "dataset": name,
            "method": "2d_slices (sam-mini-med, LoRA)",
            "adapt_cases": len(adapt_cases),
            "test_cases": len(test_cases),
            "steps": two_d["steps"],
            "train_seconds": two_d["train_seconds"],
            "dice_text": two_d["mean"]["dice"],
            "hd95_text": two_d["mean"]["hd95"],
        }
    )
    inference = compare_inference(models["lora"], name, test_cases, table, work)
    rotation = rotation_rows(name, args, augment=False) + rotation_rows(name, args, augment=True)
    return {"adaptation": rows, "inference": inference, "rotation": rotation}


def compare_inference(
    model: Any,
    name: str,
    cases: list,
    table: dict[int, str],
    work: Path,
    modes: tuple[str, ...] = ("zoom", "sliding", "resize"),
) -> list[dict[str, Any]]:
    """Zoom-out-zoom-in, sliding window and resize on the same cases: Dice, seconds and peak memory."""
    rows = []
    for mode in modes:
        summary = _score(model, cases, table, work / f"infer-{mode}", inference=mode, prompt_modes=["text"])
        rows.append(
            {
                "dataset": name,
                "inference": mode,
                "dice": summary["mean"]["dice"],
                "seconds_per_case": summary["prompts"]["text"]["seconds_per_case"],
                "peak_mib": summary["peak_mib"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def refresh_inference(args: argparse.Namespace) -> dict[str, Any]:
    """``--inference-only``: redo the inference comparison of an earlier run (its LoRA models and test
    subjects under ``--work``) and rewrite ``--out``'s inference rows and table."""
    from medpeft.data.volume_io import read_volume_dataset
    from medpeft.engine.restore import load_trained

    result = json.loads(args.out.read_text())
    rows = []
    for name in args.datasets:
        work = args.work / name
        test = set(json.loads((work / "split.json").read_text())["test"])
        cases, table = read_volume_dataset(SHARED / name)
        model, _, _ = load_trained(work / "lora")
        rows += compare_inference(model, name, [c for c in cases if c[0].name in test], table, work)
    result["inference"] = rows + run_large(args)
    result["table"] = format_tables({"adaptation": result["rows"], **result})
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(result["table"])
    return result


def rotation_rows(name: str, args: argparse.Namespace, augment: bool) -> list[dict[str, Any]]:
    """Plain vs steerable side-tuned LoRA, scored on original and rotated test volumes; with ``augment``
    trained on volumes turned up to 45 degrees (half of the items) as well."""
    from medpeft.data.volume_io import read_volume_dataset
    from medpeft.engine.volumes import DEFAULT_ROTATION

    work = args.work / name
    split_file = work / "split.json"
    test = set(json.loads(split_file.read_text())["test"])
    cases, table = read_volume_dataset(SHARED / name)
    test_cases = [c for c in cases if c[0].name in test]
    rows = []
    for method, adapters in ROTATION_METHODS.items():
        label = f"{method} + rotated training" if augment else method
        cfg = _config(
            str(args.foundation), adapters, SHARED / name, split_file, work / label.replace(" ", "_"), args
        )
        if augment:
            cfg.data.augment.__dict__.update(rotate_p=0.5, rotate_max_deg=45.0)
        model, figures = _adapt(cfg)
        summary = _score(
            model, test_cases, table, work / label.replace(" ", "_") / "eval", rotation=DEFAULT_ROTATION
        )
        rows.append({"dataset": name, "method": label, **figures, **summary["rotation"]["mean"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def refresh_rotation(args: argparse.Namespace) -> dict[str, Any]:
    """``--rotation-augmented``: add the rotation rows trained on rotated volumes to ``--out``."""
    result = json.loads(args.out.read_text())
    for name in args.datasets:
        result["rotation"] = [
            r for r in result["rotation"] if not (r["dataset"] == name and "rotated" in r["method"])
        ]
        result["rotation"] += rotation_rows(name, args, augment=True)
    result["table"] = format_tables({"adaptation": result["rows"], **result})
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(result["table"])
    return result


def run_large(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Zoom vs sliding on large volumes the foundation never saw: the BRATS test subjects (240x240x155)."""
    import glob

    cfg = _config(
        str(args.foundation),
        [{"name": "decoder"}],
        SHARED / "msd-hippocampus",
        args.work / "none.json",
        args.work / "brats",
        args,
    )
    from medpeft.engine.build import build_model

    model, _ = build_model(cfg, ["brain_tumour"])
    cases = [
        (Path(p), Path(p).parent / "OTMultiClass.nii.gz")
        for p in sorted(glob.glob(str(SHARED / "brats2015-sample/test/*/Flair_subtrMeanDivStd.nii.gz")))
    ]
    table = {v: "brain_tumour" for v in (1, 2, 3, 4)}  # every tumour region is the tumour
    return compare_inference(
        model, "brats2015 test (zero-shot)", cases, table, args.work / "brats", ("zoom", "sliding")
    )


def format_tables(result: dict[str, Any]) -> str:
    def f(v: Any, spec: str = ".3f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        "| dataset | method | Dice 3D (text) | Dice 3D (box) | trainable | train s | train peak MiB | s / case |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["adaptation"]:
        share = f"{100 * r['trainable_share']:.2f}%" if "trainable_share" in r else "-"
        lines.append(
            f"| {r['dataset']} | {r['method']} | {f(r['dice_text'])} | {f(r.get('dice_box'))} | {share} | "
            f"{f(r.get('train_seconds'), '.0f')} | {f(r.get('train_peak_mib'), '.0f')} | {f(r.get('seconds_per_case'), '.2f')} |"
        )
    lines += ["", "| dataset | inference | Dice | s / case | peak MiB |", "|---|---|---|---|---|"]
    for r in result["inference"]:
        lines.append(
            f"| {r['dataset']} | {r['inference']} | {f(r['dice'])} | {f(r['seconds_per_case'], '.2f')} | {f(r['peak_mib'], '.0f')} |"
        )
    lines += [
        "",
        "| dataset | method | Dice | Dice rotated | drop | trainable |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rotation"]:
        lines.append(
            f"| {r['dataset']} | {r['method']} | {f(r['dice'])} | {f(r['dice_rotated'])} | {f(r['drop'], '+.3f')} | "
            f"{100 * r['trainable_share']:.2f}% |"
        )
    return "\n".join(lines)


def _parallel(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One worker process per dataset (``--jobs``), each on ``--threads`` threads; their JSON read back."""
    import subprocess
    import sys

    args.work.mkdir(parents=True, exist_ok=True)
    procs = []
    for name in args.datasets:
        out = args.work / f"part-{name}.json"
        cmd = [
            sys.executable,
            __file__.replace("volumetric_3d.py", "volumetric.py"),
            "--part",
            "2",
            "--no-large",
            "--datasets",
            name,
            "--foundation",
            str(args.foundation),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
            "--seed",
            str(args.seed),
            "--work",
            str(args.work),
            "--out",
            str(out),
        ]
        log = (args.work / f"part-{name}.log").open("w")
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), out))
    parts = []
    for proc, out in procs:
        if proc.wait() != 0:
            raise SystemExit(f"worker for {out.name} failed; see {out.with_suffix('.log')}")
        data = json.loads(out.read_text())
        parts.append(
            {"adaptation": data["rows"], "inference": data["inference"], "rotation": data["rotation"]}
        )
    return parts


def main(args: argparse.Namespace) -> dict[str, Any]:
    from machine import report

    if args.inference_only:
        return refresh_inference(args)
    if args.rotation_augmented:
        return refresh_rotation(args)
    if not (Path(args.foundation) / "segvol_config.json").is_file():
        raise SystemExit(
            f"--foundation {args.foundation}: no SegVol folder; train configs/foundation_segvol_mini.yaml and "
            "merge it (medpeft merge runs/foundation_segvol_mini runs/foundation_segvol_mini/base)"
        )
    result: dict[str, Any] = {"adaptation": [], "inference": [], "rotation": []}
    parts = (
        _parallel(args)
        if args.jobs > 1 and len(args.datasets) > 1
        else [run_dataset(n, args) for n in args.datasets]
    )
    for part in parts:
        for key in result:
            result[key] += part[key]
    if not args.no_large:
        result["inference"] += run_large(args)
    table = format_tables(result)
    settings = {k: str(v) for k, v in vars(args).items()}
    return report(
        result["adaptation"],
        table,
        args.out,
        settings=settings,
        **{k: result[k] for k in ("inference", "rotation")},
    )
