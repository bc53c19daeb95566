"""Deterministic train / val / test splits of image records, or splits read from a json file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .io import DataError

T = TypeVar("T")
SPLITS = ("train", "val", "test")
_ALIASES = {"validation": "val", "valid": "val"}


def _key(record: Any) -> str:
    return str(getattr(record, "image", record))


def _stem(record: Any) -> str:
    return Path(_key(record)).stem


def split_records(
    records: Sequence[T],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    split_file: Path | None = None,
) -> dict[str, list[T]]:
    """Split records (sorted by image path, then a seeded permutation) into train / val / test.

    Each split with a non-zero fraction gets at least one record. With ``split_file`` the
    split is read from that file instead (see :func:`load_split_file`).
    """
    if split_file is not None:
        return load_split_file(split_file, records)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or fractions[0] <= 0:
        raise DataError(f"split fractions must be 3 non-negative numbers with train > 0, got {fractions}")
    if abs(sum(fractions) - 1.0) > 1e-3:
        raise DataError(f"split fractions must sum to 1, got {fractions} (sum {sum(fractions):g})")
    ordered = sorted(records, key=_key)
    n = len(ordered)
    needed = sum(f > 0 for f in fractions)
    if n < needed:
        raise DataError(
            f"cannot split {n} record(s) into {needed} non-empty splits {fractions}; "
            "add images or set the val/test fractions to 0"
        )
    counts = [max(1, round(f * n)) if f > 0 else 0 for f in fractions[1:]]
    while n - sum(counts) < 1:  # give back to train from the largest of val / test
        counts[int(np.argmax(counts))] -= 1
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = counts
    pick = [ordered[i] for i in order]
    return {
        "train": pick[: n - n_val - n_test],
        "val": pick[n - n_val - n_test : n - n_test],
        "test": pick[n - n_test :],
    }


def load_split_file(path: Path, records: Sequence[T]) -> dict[str, list[T]]:
    """Split ``records`` by a json file ``{"train": [stems], "val": [...], "test": [...]}``.

    Entries may be image stems or file names; a missing key is an empty split; records named in no
    split are left out. Unknown or repeated entries are errors.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read split file {path}: {err}") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise DataError(f'split file {path} must be {{"train": [stems], "val": [...], "test": [...]}}')
    by_stem = {_stem(r): r for r in records}
    out: dict[str, list[T]] = {s: [] for s in SPLITS}
    seen: dict[str, str] = {}
    for key, entries in data.items():
        split = _ALIASES.get(key, key)
        if split not in SPLITS:
            raise DataError(f"unknown split {key!r} in {path}; expected {list(SPLITS)}")
        for entry in entries:
            stem = Path(str(entry)).stem
            if stem not in by_stem:
                raise DataError(f"split file {path} names {entry!r}, which is not an image of the dataset")
            if stem in seen:
                raise DataError(f"split file {path} puts {entry!r} in both {seen[stem]!r} and {split!r}")
            seen[stem] = split
            out[split].append(by_stem[stem])
    return out


def save_split_file(splits: dict[str, list[Any]], path: Path) -> None:
    """Write splits as image stems (readable by :func:`load_split_file`)."""
    data = {k: [_stem(r) for r in v] for k, v in splits.items()}
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
