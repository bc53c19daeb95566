"""Turn a trained foundation run into the package's bundled base (``sam-mini-med``) and its model card.

    medpeft train configs/foundation_sam_mini_med.yaml
    python scripts/bundle_foundation.py runs/foundation_sam_mini_med

Writes ``src/medpeft/weights/sam-mini-med.safetensors`` (float16), its manifest ``sam-mini-med.json``
(file SHA-256, weights hash as loaded, parameter count, training summary, measured Dice) and
``MODEL_CARD.md``. Dice figures are measured here on the float16 weights as shipped: per training
source on its validation split (box prompts, the run's label tokens), and zero-shot on the bundled
demo CT slices (box prompts, no class token), which the test suite re-measures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import SamModel

from medpeft.backbones.sam.loading import load_sam
from medpeft.config import parse_config, parse_recorded_config
from medpeft.data.collection import read_source
from medpeft.data.splits import split_records
from medpeft.engine import checkpoint as ckpt
from medpeft.engine.build import build_model
from medpeft.engine.merge import merge_checkpoint
from medpeft.engine.restore import load_trained
from medpeft.tasks.segmentation import build_dataset, build_splits
from medpeft.tasks.segmentation_eval import evaluate

NAME = "sam-mini-med"
REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "demo_data" / "totalseg_ct"
LICENCES = {
    "totalseg-example": ("TotalSegmentator example MR", "Apache-2.0"),
    "hc18-fetal-us": ("HC18 fetal-head ultrasound", "CC BY 4.0"),
    "msd-hippocampus": ("MSD Task04 Hippocampus MRI", "CC BY-SA 4.0"),
    "isbi2012-em": ("ISBI 2012 neuronal EM", "MIT-licensed copy"),
    "pyradiomics-mr": ("pyradiomics MR lesions", "BSD-3-Clause"),
}


def source_name(source) -> str:
    path = str(source.root or source.volume)
    return next((k for k in LICENCES if k in path), path)


def demo_zero_shot(image_size: int) -> dict[str, float]:
    """Zero-shot Dice of the shipped weights on the bundled demo CT test slices (box prompts, no class token)."""
    cfg = parse_config(
        {
            "model": {"base": NAME, "image_size": image_size, "class_prompt": "none"},
            "data": {"root": str(DEMO_DATA), "split": [0.6, 0.2, 0.2]},
            "adapters": [{"name": "decoder"}],
        }
    )
    splits = build_splits(cfg)
    model, _ = build_model(cfg, splits.label_names)
    s = evaluate(
        model.eval(), build_dataset(cfg, splits.test, splits.label_names, train=False), "box", progress=False
    )
    return {"mean": s["mean"]["dice"], **{n: c["dice"] for n, c in s["per_class"].items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, default=REPO / "src" / "medpeft" / "weights")
    args = p.parse_args()
    torch.set_num_threads(1)

    best = ckpt.resolve_checkpoint(args.run)
    record = ckpt.read_record(best)
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "merged"
        merge_checkpoint(best, merged)
        sd = SamModel.from_pretrained(merged).state_dict()
    half = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / f"{NAME}.safetensors"
    save_file(half, str(weights), metadata={"format": "medpeft-bundled", "name": NAME})
    cfg = parse_recorded_config(record.config)
    manifest = {
        "name": NAME,
        "file": weights.name,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "preset": cfg.model.base,
        "image_size": cfg.model.image_size,
        "dtype": "float16",
    }
    (args.out / f"{NAME}.json").write_text(json.dumps(manifest, indent=2))  # the loader reads it below

    model, identity = load_sam(NAME, cfg.model.image_size)
    manifest["weights_sha256"] = identity.sha256
    manifest["parameters"] = sum(p.numel() for p in model.parameters())

    # per-source validation Dice with the run's model, its SAM weights rounded as shipped
    trained, rec, tcfg = load_trained(best)
    trained.sam.load_state_dict({k: v.float() for k, v in half.items()})
    per_source = {}
    for i, source in enumerate(tcfg.data.sources or []):
        records, names = read_source(source)
        val = split_records(records, tcfg.data.split, seed=tcfg.data.seed + i)["val"]
        ds = build_dataset(tcfg, val, rec.label_names, train=False)
        s = evaluate(trained, ds, "box", progress=False)
        per_source[source_name(source)] = {
            "images": len(val),
            "labels": names,
            "val_dice_box": s["mean"]["dice"],
        }
        print(f"{source_name(source):<20} {len(val):>4} val images  Dice {s['mean']['dice']:.3f}")
    manifest["training"] = {
        "config": "configs/foundation_sam_mini_med.yaml",
        "steps": record.step,
        "epochs": record.epoch,
        "best_val_dice_box": record.scores.get("val_dice"),
        "sources": per_source,
    }
    manifest["demo_zero_shot_dice_box"] = demo_zero_shot(cfg.model.image_size)
    print(f"demo CT zero-shot box Dice {manifest['demo_zero_shot_dice_box']['mean']:.3f}")
    (args.out / f"{NAME}.json").write_text(json.dumps(manifest, indent=2))
    write_card(args.out / "MODEL_CARD.md", manifest)
    print(f"wrote {weights} ({weights.stat().st_size / 2**20:.2f} MiB), manifest and MODEL_CARD.md")


def write_card(path: Path, m: dict) -> None:
    t = m["training"]
    rows = "\n".join(
        f"| {LICENCES[k][0]} | {LICENCES[k][1]} | {', '.join(v['labels'])} | {v['images']} | {v['val_dice_box']:.3f} |"
        for k, v in t["sources"].items()
    )
    demo = m["demo_zero_shot_dice_box"]
    organs = ", ".join(f"{k} {v:.3f}" for k, v in demo.items() if k != "mean")
    path.write_text(
        f"""# Model card: `{m["name"]}` (bundled with medpeft)

**What it is.** SAM's architecture in the small `{m["preset"]}` preset (image encoder width 192, 6 blocks;
prompt encoder and mask decoder width 128): **{m["parameters"]:,} parameters** at {m["image_size"]}x{m["image_size"]},
trained here from random initialisation (method `full`) on 2D images and 2D slices of 3D volumes from the
sources below, with box, point, box+point and automatic (learned label token) prompts mixed. Stored as
float16 safetensors ({m["file"]}, SHA-256 `{m["sha256"]}`); loaded as float32, its weights hash is
`{m["weights_sha256"]}` (recorded in every adapter trained on it). Use it as `model.base: {m["name"]}`.

**Training.** `{t["config"]}`, {t["steps"]} optimizer steps ({t["epochs"]} epochs, batch 4, AdamW lr 5e-4,
cosine), best validation Dice (box prompts, all sources) {t["best_val_dice_box"]:.3f}.

| source | licence | labels | val images | val Dice (box) |
|---|---|---|---:|---:|
{rows}

Validation splits are per-source random splits of *slices* (volumes can have slices on both sides),
measured with the float16 weights as shipped and the run's learned label tokens.

**Kept out on purpose.** Kvasir-SEG, BRATS and ACDC (their terms are research-only or non-commercial),
and every CT image (the TotalSegmentator CT volume the demo adapts to, and the SAM-Med2D CT slices), so
`make demo` is a real adaptation to a modality this model never saw. Zero-shot on the demo's CT test
slices (box prompts, no label token): mean Dice {demo["mean"]:.3f} ({organs}).

**Reproduce.**
```bash
medpeft train configs/foundation_sam_mini_med.yaml          # needs ../shared/data; 47 min on 1 CPU thread here (beside other jobs)
python scripts/bundle_foundation.py runs/foundation_sam_mini_med
```

**What it is not.** Not a medical device and not for clinical use. Small ({m["parameters"] / 1e6:.1f}M
parameters) and trained on a few thousand images: a starting point for adaptation on a CPU, not a
competitor to SAM ViT-B/MedSAM. Trained at 256x256 only (other sizes are ported by interpolation, untested).
"""
    )


if __name__ == "__main__":
    main()
