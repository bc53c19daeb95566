"""Build the bundled demo dataset ``demo_data/totalseg_ct`` from TotalSegmentator's example CT.

Usage: python scripts/make_demo_data.py [--source ../shared/data/totalseg-example] [--out demo_data/totalseg_ct]

Axial slices of the small example CT (CT abdomen window, level 40 / width 400) with the label map
reduced to five large abdominal organs; slices with too little of them are skipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import nibabel as nib

from medpeft.data.volumes import export_slices

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "totalseg-example"
DEFAULT_OUT = REPO / "demo_data" / "totalseg_ct"
ORGANS = ("liver", "spleen", "kidney_left", "kidney_right", "stomach")
MAX_SLICES = 40

NOTICE = """# Demo data: licence and source

`totalseg_ct/` holds {n} axial slices (PNG, CT abdomen window level 40 / width 400) cut from the
example CT `{ct}` and its label map `{seg}` of the **TotalSegmentator** repository
(https://github.com/wasserth/TotalSegmentator), which is licensed under the **Apache License 2.0**.
Only these organs are kept: {organs}; `labels.json` maps mask values to them and `spacing.json`
gives each slice's pixel size in mm.

The labels are TotalSegmentator's reference **model outputs** for the example image, not manual
ground truth: use them to try the software, not to measure accuracy.

Regenerate with `python scripts/make_demo_data.py` (needs `../shared/data/totalseg-example`).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    seg = args.source / "example_seg.nii.gz"
    seg_shape = nib.load(str(seg)).shape
    ct = next(
        p
        for p in (args.source / "example_ct_sm.nii.gz", args.source / "example_ct.nii.gz")
        if p.is_file() and nib.load(str(p)).shape == seg_shape
    )
    names = json.loads((args.source / "labels.json").read_text())["ct"]
    labels = {int(v): n for v, n in names.items() if n in ORGANS}

    if args.out.exists():
        shutil.rmtree(args.out)
    written = export_slices(
        ct,
        seg,
        args.out,
        labels,
        axis=2,
        min_foreground_pixels=200,
        min_label_pixels=20,
        window=(40, 400),
        max_slices=MAX_SLICES,
    )
    (args.out.parent / "LICENSE-NOTICE.md").write_text(
        NOTICE.format(n=len(written), ct=ct.name, seg=seg.name, organs=", ".join(sorted(labels.values())))
    )
    size = sum(p.stat().st_size for p in args.out.parent.rglob("*") if p.is_file())
    print(
        f"wrote {len(written)} slices, labels {sorted(labels.values())}, {size / 1024:.0f} KiB to {args.out}"
    )


if __name__ == "__main__":
    main()
