"""Transfer benchmark: adapt a foundation SAM to a target dataset with every method, at equal epochs.

    python benchmarks/transfer.py SOURCE_CKPT TARGET_DATASET [--shots 10 50 all] [--seeds 3] [--quick]

``SOURCE_CKPT``: a medpeft run or checkpoint directory (merged once into ``OUT/base_model``), a
merged model directory, a segment-anything ``.pth``, a hub id or a preset name. ``TARGET_DATASET``:
any 2D folder or SAM-Med2D dataset. Its ``splits.json`` is used when present; otherwise a seeded
70/15/15 split. Validation and test stay fixed; each (shots, seed) draws ``shots`` training images
from the training split. Model selection uses the validation split only (the trainer keeps the best
validation checkpoint); the test split is scored once per run, with box prompts and in automatic
mode (label prompt, no box), at each image's own resolution.

Methods (``--methods`` picks a subset): zero_shot (no training), decoder, layernorm, lora (r=4 at
lr 5e-3 as SAMed, + decoder, as LoRA-SAM), vector_lora (DARES ranks 14->8 at lr 5e-3 + decoder), ssam (singular values, norms,
pos-embed; box/point prompts only), ssam_text (the same with label-name prompts: CLIP with
``--text-encoder``, else a learned embedding per label), galore_srft / galore_svd (attention
weights under GaLore-AdamW, decoder trained beside them), full, and unet (MONAI U-Net from scratch, automatic mode only).

Each run is a fresh subprocess, so its peak memory (peak RSS after training) and time are its
own. Writes ``OUT/results.json`` (every run and the mean/std over seeds), ``OUT/table.md`` and
``OUT/dice_vs_params.png`` (Dice against trainable parameters, log x, like S-SAM's Figure 4).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import machine_info
from process_memory import peak_rss_mib

METHODS = (
    "zero_shot",
    "decoder",
    "layernorm",
    "lora",
    "vector_lora",
    "ssam",
    "ssam_text",
    "galore_srft",
    "galore_svd",
    "full",
    "unet",
)
# Learning rates fixed a priori (never tuned on the test split): 1e-3 for methods that train under 1%
# of the model (layernorm, S-SAM), 1e-4 for those that train whole layers (decoder, LoRA + decoder,
# GaLore, full), 1e-3 for the U-Net trained from scratch.
PEFT_LR, FULL_LR, UNET_LR = 1e-3, 1e-4, 1e-3
LORA_LR = 5e-3  # SAMed trains its LoRA at 5e-3
RESULT_FIELDS = (
    "method",
    "shots",
    "seed",
    "train_images",
    "epochs",
    "steps",
    "lr",
    "class_prompt",
    "trainable",
    "total_params",
    "trainable_share",
    "optimizer_state",
    "adapter_bytes",
    "train_seconds",
    "peak_rss_mib",
    "val_dice",
    "dice_box",
    "dice_auto",
    "assd_box",
    "assd_auto",
)
SUMMARY_METRICS = ("dice_box", "dice_auto", "assd_box", "assd_auto", "train_seconds", "peak_rss_mib")


# ----------------------------------------------------------------------------- method recipes


def method_recipe(method: str, text_encoder: str | None, galore_rank: int) -> dict[str, Any]:
    """Adapters, optimizer, class prompt, prompt modes and learning rate of one method."""
    mixed = {"box": 0.5, "point": 0.25, "auto": 0.25}
    recipe: dict[str, Any] = {
        "adapters": [],
        "optimizer": {},
        "class_prompt": "learned",
        "modes": mixed,
        "lr": PEFT_LR,
    }
    galore = {"name": "galore_adamw", "rank": galore_rank, "update_gap": 50, "scale": 0.25}
    if method == "zero_shot":
        recipe["class_prompt"] = "none"
    elif method == "decoder":
        recipe["adapters"] = [{"name": "decoder"}]
        recipe["lr"] = FULL_LR
    elif method == "layernorm":
        recipe["adapters"] = [{"name": "layernorm"}]
    elif method == "lora":  # LoRA at SAMed's own learning rate: at FULL_LR its zero-init B barely moves
        recipe["adapters"] = [{"name": "lora", "r": 4, "lr": LORA_LR}, {"name": "decoder"}]
        recipe["lr"] = FULL_LR
    elif method == "vector_lora":
        recipe["adapters"] = [
            {"name": "vector_lora", "r_max": 14, "r_min": 8, "lr": LORA_LR},
            {"name": "decoder"},
        ]
        recipe["lr"] = FULL_LR
    elif method in ("ssam", "ssam_text"):
        recipe["adapters"] = [
            {"name": "svd"},
            {"name": "layernorm", "scope": "encoder"},
            {"name": "pos_embed"},
        ]
        if method == "ssam":
            recipe["class_prompt"] = "none"
            recipe["modes"] = {"box": 0.67, "point": 0.33}
        elif text_encoder:
            recipe["class_prompt"] = "text"
    elif method in ("galore_srft", "galore_svd"):
        # the decoder trains beside the projected attention weights, as in the LoRA rows and the paper
        recipe["adapters"] = [{"name": "attention_weights", "layers": "attn"}, {"name": "decoder"}]
        recipe["optimizer"] = dict(galore, projector=method.split("_")[1])
        recipe["lr"] = FULL_LR
    elif method == "full":
        recipe["adapters"] = [{"name": "full"}]
        recipe["lr"] = FULL_LR
    elif method == "unet":  # from scratch through the same training loop; it takes no prompts
        recipe.update(
            base="unet", adapters=[{"name": "full"}], lr=UNET_LR, class_prompt="none", modes={"auto": 1.0}
        )
    else:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    return recipe


def job_config(job: dict[str, Any]) -> dict[str, Any]:
    """The medpeft config (as a mapping) of one run."""
    r = method_recipe(job["method"], job.get("text_encoder"), job["galore_rank"])
    cfg: dict[str, Any] = {
        "model": {
            "base": r.get("base", job["base"]),
            "image_size": job["image_size"],
            "class_prompt": r["class_prompt"],
            # SAM's attention windows (model.window_size); the U-Net has none
            **({"window_size": job["window_size"]} if job.get("window_size") and "base" not in r else {}),
        },
        "data": {"root": job["target"], "split_file": job["split_file"]},
        "prompts": {"train_modes": r["modes"], "eval_mode": "box"},
        "adapters": r["adapters"],
        "train": {
            "output_dir": job["run_dir"],
            "epochs": job["epochs"],
            "batch_size": job["batch_size"],
            "lr": r["lr"],
            "val_every": job["val_every"],
            "warmup_frac": 0.1,
            "seed": job["seed"],
            "log_every": 1000,
        },
    }
    if r["class_prompt"] == "text":
        cfg["model"]["text_encoder"] = job["text_encoder"]
    if r["optimizer"]:
        cfg["optimizer"] = r["optimizer"]
    return cfg


# ----------------------------------------------------------------------------- one run (worker)


def _scores(summary: dict[str, Any], key: str) -> float:
    return float(summary["mean"][key])


def _evaluate(model: Any, dataset: Any, modes: tuple[str, ...], out: Path) -> dict[str, float]:
    from medpeft.tasks.segmentation_eval import evaluate

    res: dict[str, float] = {}
    for mode in ("box", "auto"):
        if mode not in modes:
            res[f"dice_{mode}"] = res[f"assd_{mode}"] = math.nan
            continue
        try:
            s = evaluate(model, dataset, mode, out / f"eval-{mode}", progress=False)
        except ValueError as err:  # e.g. automatic mode with several classes and no class prompt
            print(f"[transfer] {out.name}: {mode} mode not available ({err})")
            res[f"dice_{mode}"] = res[f"assd_{mode}"] = math.nan
            continue
        res[f"dice_{mode}"], res[f"assd_{mode}"] = _scores(s, "dice"), _scores(s, "assd")
    return res


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train (unless zero-shot) and evaluate one method; returns one results row."""
    import torch

    from medpeft.config import parse_config
    from medpeft.engine import checkpoint as ckpt
    from medpeft.engine.build import build_model, build_optimizer
    from medpeft.engine.report import trainable_share
    from medpeft.optim import optimizer_state_numel
    from medpeft.tasks.segmentation import build_dataset, build_splits

    torch.set_num_threads(job["threads"])
    run_dir = Path(job["run_dir"])
    cfg = parse_config(job_config(job), source=f"transfer job {job['method']}")
    splits = build_splits(cfg)
    test_ds = build_dataset(cfg, splits.test, splits.label_names, train=False)
    row: dict[str, Any] = {k: job.get(k) for k in ("method", "shots", "seed", "epochs")}
    row.update(train_images=len(splits.train), class_prompt=cfg.model.class_prompt, lr=cfg.train.lr)
    t0 = time.perf_counter()
    if job["method"] == "zero_shot":
        model, _ = build_model(cfg, splits.label_names)
        model.eval()
        row.update(
            train_seconds=0.0, peak_rss_mib=peak_rss_mib(), steps=0, val_dice=math.nan, adapter_bytes=0
        )
        row.update(trainable=0, total_params=trainable_share(model)[1], optimizer_state=0)
        row.update(_evaluate(model, test_ds, ("box", "auto"), run_dir))
    else:
        from medpeft.engine.restore import load_trained
        from medpeft.engine.trainer import train

        result = train(cfg, overwrite=True, progress=False)
        row["train_seconds"], row["peak_rss_mib"] = time.perf_counter() - t0, peak_rss_mib()
        row["steps"], row["val_dice"] = result.steps, result.best_dice
        best = ckpt.resolve_checkpoint(run_dir)
        row["adapter_bytes"] = (best / ckpt.ADAPTER_FILE).stat().st_size
        model, _, _ = load_trained(best)  # built as in training: the same tensors are trainable
        trainable, total = trainable_share(model)
        row.update(
            trainable=trainable,
            total_params=total,
            optimizer_state=optimizer_state_numel(build_optimizer(cfg, model)),
        )
        row.update(
            _evaluate(model, test_ds, ("auto",) if job["method"] == "unet" else ("box", "auto"), run_dir)
        )
    row["trainable_share"] = row["trainable"] / max(1, row["total_params"])
    return row


# ----------------------------------------------------------------------------- orchestration


def resolve_base(source: str, out: Path) -> str:
    """A medpeft run/checkpoint is merged into ``out/base_model`` (once); anything else is used as given."""
    path = Path(source)
    is_medpeft = path.is_dir() and any(
        (path / f).is_file() for f in ("adapter.json", "best.json", "last.json")
    )
    if not is_medpeft:
        return source
    target = out / "base_model"
    if not (target / "config.json").is_file():
        from medpeft.engine.merge import merge_checkpoint

        diff = merge_checkpoint(path, target)
        print(f"[transfer] merged {source} into {target} (max |logit| change {diff:.2e})")
    return str(target)


def base_splits(target: Path, seed: int = 0) -> tuple[dict[str, list[Any]], list[str]]:
    """Fixed train/val/test of the target: its ``splits.json`` if present, else a seeded 70/15/15 split."""
    from medpeft.data.readers import read_dataset
    from medpeft.data.splits import load_split_file, split_records

    records, labels = read_dataset(target)
    if (target / "splits.json").is_file():
        return load_split_file(target / "splits.json", records), labels
    return split_records(records, (0.7, 0.15, 0.15), seed=seed), labels


def shot_split(parts: dict[str, list[Any]], shots: str, seed: int, path: Path) -> int:
    """Write the split file of one (shots, seed): ``shots`` training images drawn with ``seed``."""
    from medpeft.data.splits import save_split_file

    train = sorted(parts["train"], key=lambda r: str(r.image))
    if shots != "all":
        order = np.random.default_rng(1000 + seed).permutation(len(train))
        train = [train[i] for i in order[: int(shots)]]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_split_file({"train": train, "val": parts["val"], "test": parts["test"]}, path)
    return len(train)


def plan(args: argparse.Namespace, base: str, out: Path) -> list[dict[str, Any]]:
    """Every (shots, seed, method) job with its epochs: equal for all methods of a (shots, seed)."""
    parts, _ = base_splits(Path(args.target))
    if not parts["train"] or not parts["test"]:
        raise SystemExit(f"{args.target}: the training and test splits must both hold images")
    jobs = []
    for shots in args.shots:
        for seed in range(args.seeds):
            split_file = out / "splits" / f"shots-{shots}-seed-{seed}.json"
            n = shot_split(parts, shots, seed, split_file)
            if shots != "all" and n < int(shots):
                print(f"[transfer] only {n} training images for --shots {shots}: using all of them")
            epochs = max(1, math.ceil(args.steps / math.ceil(n / args.batch_size)))
            for method in args.methods:
                jobs.append(
                    {
                        "method": method,
                        "shots": shots,
                        "seed": seed,
                        "epochs": epochs,
                        "val_every": max(1, epochs // args.validations),
                        "base": base,
                        "target": str(args.target),
                        "split_file": str(split_file),
                        "run_dir": str(out / "runs" / f"shots-{shots}" / f"seed-{seed}" / method),
                        "image_size": args.image_size,
                        "window_size": args.window_size,
                        "batch_size": args.batch_size,
                        "galore_rank": args.galore_rank,
                        "text_encoder": args.text_encoder,
                        "threads": args.threads,
                    }
                )
    return jobs


def run_in_subprocess(job: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run one job in a fresh interpreter (its own peak memory); returns its row or raises."""
    job_file = Path(job["run_dir"] + ".job.json")
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps(job))
    result_file = job_file.with_suffix(".result.json")
    result_file.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", str(job_file)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not result_file.is_file():
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise RuntimeError(f"{job['method']} (shots {job['shots']}, seed {job['seed']}) failed:\n{tail}")
    return json.loads(result_file.read_text())


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds for each (shots, method)."""
    out = []
    keys = sorted(
        {(r["shots"], r["method"]) for r in rows}, key=lambda k: (_shots_key(k[0]), METHODS.index(k[1]))
    )
    for shots, method in keys:
        sel = [r for r in rows if r["shots"] == shots and r["method"] == method]
        entry: dict[str, Any] = {"shots": shots, "method": method, "seeds": len(sel)}
        for k in (
            "trainable",
            "total_params",
            "trainable_share",
            "optimizer_state",
            "adapter_bytes",
            "class_prompt",
        ):
            entry[k] = sel[0][k]
        for m in SUMMARY_METRICS:
            vals = np.array([r[m] for r in sel], dtype=float)
            vals = vals[np.isfinite(vals)]
            entry[m] = float(vals.mean()) if vals.size else None
            entry[f"{m}_std"] = float(vals.std()) if vals.size else None
        out.append(entry)
    return out


def _shots_key(shots: str) -> float:
    return math.inf if shots == "all" else float(shots)


def _fmt(v: Any, std: Any = None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    s = f"{v:.{digits}f}"
    return f"{s} ± {std:.{digits}f}" if std is not None and std > 0 else s


def format_table(summary: list[dict[str, Any]]) -> str:
    """A markdown table: one row per (shots, method)."""
    head = (
        "| shots | method | trainable | share | adapter | train s | peak MiB | Dice box | Dice auto | ASSD box | ASSD auto |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for e in summary:
        size = e["adapter_bytes"] or 0
        lines.append(
            f"| {e['shots']} | {e['method']} | {e['trainable']:,} | {100 * e['trainable_share']:.2f}% | "
            f"{size / 2**20:.2f} MB | {_fmt(e['train_seconds'], digits=0)} | {_fmt(e['peak_rss_mib'], digits=0)} | "
            f"{_fmt(e['dice_box'], e['dice_box_std'])} | {_fmt(e['dice_auto'], e['dice_auto_std'])} | "
            f"{_fmt(e['assd_box'], e['assd_box_std'], 2)} | {_fmt(e['assd_auto'], e['assd_auto_std'], 2)} |"
        )
    return "\n".join(lines)


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    """Dice (box prompts; automatic mode for the U-Net) against trainable parameters, log x, per shots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = sorted({e["shots"] for e in summary}, key=_shots_key)
    fig, axes = plt.subplots(1, len(shots), figsize=(5.5 * len(shots), 4.5), squeeze=False)
    for ax, s in zip(axes[0], shots, strict=True):
        for e in (e for e in summary if e["shots"] == s):
            dice = e["dice_box"] if e["dice_box"] is not None else e["dice_auto"]
            if dice is None:
                continue
            x = max(e["trainable"], 1)
            marker = "s" if e["method"] == "unet" else ("x" if e["method"] == "zero_shot" else "o")
            ax.errorbar(x, dice, yerr=e["dice_box_std"] or 0, fmt=marker, capsize=3)
            ax.annotate(e["method"], (x, dice), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log; zero-shot plotted at 1)")
        ax.set_ylabel("test Dice (box prompts; U-Net: automatic)")
        ax.set_title(f"{s} training images")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="foundation: medpeft run/checkpoint dir, model dir, .pth, hub id or preset")
    p.add_argument("target", type=Path, help="target 2D folder or SAM-Med2D dataset")
    p.add_argument(
        "--shots", nargs="+", default=None, help="training images per run, or 'all' (default 10 50)"
    )
    p.add_argument("--seeds", type=int, default=None, help="seeds per shots value (default 1)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="target optimizer steps per run, rounded up to whole epochs (default 150)",
    )
    p.add_argument("--validations", type=int, default=5, help="validations per run (sets train.val_every)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument(
        "--window-size", default=None, help="SAM's model.window_size: auto or a number (default: the base's)"
    )
    p.add_argument("--galore-rank", type=int, default=48)
    p.add_argument(
        "--text-encoder",
        default=None,
        help="CLIP hub id or local dir for ssam_text (default: learned label embedding)",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--quick", action="store_true", help="shots 10, 1 seed, 40 steps: a check in minutes")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run jobs in this process (tests; memory figures are then shared)",
    )
    p.add_argument("--out", type=Path, default=Path("results/transfer"))
    args = p.parse_args(argv)
    args.shots = args.shots or (["10"] if args.quick else ["10", "50"])
    args.seeds = args.seeds or 1
    args.steps = args.steps or (40 if args.quick else 150)
    for s in args.shots:
        if s != "all" and (not s.isdigit() or int(s) < 1):
            p.error(f"--shots takes positive integers or 'all', got {s!r}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    base = resolve_base(args.source, out)
    jobs = plan(args, base, out)
    from tqdm.auto import tqdm

    rows = []
    t0 = time.perf_counter()
    bar = tqdm(jobs, desc="transfer", unit="run")
    for job in bar:
        bar.set_postfix(method=job["method"], shots=job["shots"], seed=job["seed"])
        row = run_job(job) if args.in_process else run_in_subprocess(job, out)
        rows.append(row)
        bar.write(
            f"{job['method']:<12} shots {job['shots']:>4} seed {job['seed']}: Dice box {_fmt(row['dice_box'])}, "
            f"auto {_fmt(row['dice_auto'])}, {row['train_seconds']:.0f} s"
        )
    summary = summarize(rows)
    table = format_table(summary)
    print(table)
    report = {
        "source": args.source,
        "base_model": base,
        "target": str(args.target),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
        "wall_seconds": time.perf_counter() - t0,
        "runs": [{k: r.get(k) for k in RESULT_FIELDS} for r in rows],
        "summary": summary,
    }
    (out / "results.json").write_text(json.dumps(_finite(report), indent=2, default=str))
    (out / "table.md").write_text(table + "\n")
    plot(summary, out / "dice_vs_params.png")
    print(f"wrote {out / 'results.json'}, {out / 'table.md'} and {out / 'dice_vs_params.png'}")
    return report


def _finite(v: Any) -> Any:
    """NaN/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        job_path = Path(sys.argv[2])
        result = run_job(json.loads(job_path.read_text()))
        job_path.with_suffix(".result.json").write_text(json.dumps(_finite(result)))
    else:
        main()
