"""Label tables: ``labels.json`` parsing and the choice of labels a dataset is read with."""

from __future__ import annotations

import json
from pathlib import Path

from .io import DataError

DEFAULT_LABEL = "foreground"


def parse_labels_json(path: Path, key: str | None = None) -> dict[int, str]:
    """Read a label table: {"1": "liver"}, {"labels": {...}}, {"liver": 1} or ["background", "liver"].

    ``key`` selects a nested table (TotalSegmentator's labels.json holds ``ct`` and ``mr``).
    Value 0 is background and dropped. Returns value -> name sorted by value.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read label table {path}: {err}") from None
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            keys = list(data) if isinstance(data, dict) else []
            raise DataError(f"label table {path} has no key {key!r}; keys: {keys}")
        data = data[key]
    if isinstance(data, dict) and isinstance(data.get("labels"), dict | list):
        data = data["labels"]
    table: dict[int, str] = {}
    try:
        if isinstance(data, list):
            table = {i: str(n) for i, n in enumerate(data)}
        elif isinstance(data, dict) and all(isinstance(v, int) for v in data.values()):
            table = {int(v): str(k) for k, v in data.items()}
        elif isinstance(data, dict):
            table = {int(k): str(v) for k, v in data.items()}
        else:
            raise TypeError
    except (TypeError, ValueError):
        raise DataError(
            f'label table {path} must map integer values to names, e.g. {{"1": "liver", "2": "spleen"}}'
        ) from None
    table.pop(0, None)
    if not table:
        raise DataError(f"label table {path} names no label (value 0 is background)")
    names = list(table.values())
    if len(set(names)) != len(names):
        raise DataError(f"label table {path} repeats a label name: {names}")
    return dict(sorted(table.items()))


def select_labels(available: list[str], wanted: list[str] | None, source: str) -> list[str]:
    if wanted is None:
        return available
    for name in wanted:
        if name not in available:
            raise DataError(f"unknown label {name!r} in {source}; valid labels: {available}")
    return list(wanted)
