"""Build the transfer benchmark's target: BRATS subjects held out of the foundation's source collection.

Usage: python scripts/make_transfer_target.py [--brats ../shared/data/brats2015-sample] [--out runs/targets/brats-t1c-wt]

Axial T1c slices (the foundation saw only Flair, and only the train/validation subjects) of the
BRATS ``test`` subjects with the whole tumour (label values 1-4) as one label, as a folder dataset
with a ``splits.json`` by subject: the first subject's slices are the training pool (every 4th slice
to validation), the second subject is the test set. The output stays outside the repository
(BRATS is CC BY-NC-SA: not redistributed here).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from medpeft.data.volumes import export_slices

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BRATS = REPO.parent / "shared" / "data" / "brats2015-sample"
DEFAULT_OUT = REPO / "runs" / "targets" / "brats-t1c-wt"


def build(brats: Path, out: Path, min_pixels: int = 100) -> dict[str, list[str]]:
    """Export the slices and write ``splits.json``; returns the splits (image stems)."""
    subjects = sorted(p for p in (brats / "test").iterdir() if p.is_dir())
    if len(subjects) < 2:
        raise SystemExit(f"{brats / 'test'} needs two subject folders, found {len(subjects)}")
    if out.exists():
        raise SystemExit(f"{out} exists; remove it first (nothing is overwritten)")
    stems: list[list[str]] = []
    for subject in subjects[:2]:
        written = export_slices(
            subject / "T1c_subtrMeanDivStd.nii.gz",
            subject / "OTMultiClass.nii.gz",
            out,
            {},
            min_foreground_pixels=min_pixels,
            groups={"tumour": [1, 2, 3, 4]},
            stem=f"{subject.name}_T1c",
        )
        stems.append([p.stem for p in written])
    pool, test = stems
    splits = {
        "train": [s for i, s in enumerate(pool) if i % 4 != 3],
        "val": [s for i, s in enumerate(pool) if i % 4 == 3],
        "test": test,
    }
    (out / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")
    return splits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--brats", type=Path, default=DEFAULT_BRATS)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    args = p.parse_args()
    if args.force and args.out.exists():
        shutil.rmtree(args.out)
    splits = build(args.brats, args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))


if __name__ == "__main__":
    main()
