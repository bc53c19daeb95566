"""Where a benchmark ran, recorded the same way in every benchmark's JSON."""

from __future__ import annotations

import os
import platform


def machine_info() -> dict[str, object]:
    """CPU count, torch, Python and OS versions (threads are recorded by each benchmark where it sets them)."""
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
