"""Where a benchmark ran, recorded the same way in every benchmark's JSON."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, object]:
    """CPU count, torch, Python and OS versions (threads are recorded by each benchmark where it sets them)."""
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def report(rows: list[dict[str, Any]], table: str, out: Path | None, **fields: Any) -> dict[str, Any]:
    """Print a benchmark's table and write its JSON (``fields``, the machine, the rows and the table) to ``out``."""
    print(table)
    result = {**fields, "machine": machine_info(), "rows": rows, "table": table}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result
