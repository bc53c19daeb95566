"""Adapter checkpoints: only trained tensors (safetensors) plus a JSON record, written atomically.

Layout of a run directory::

    run/checkpoints/step-000120/{adapter.safetensors, adapter.json, training_state.pt}
    run/last.json  run/best.json   (pointers, replaced atomically after a checkpoint is complete)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

ADAPTER_FILE = "adapter.safetensors"
RECORD_FILE = "adapter.json"
STATE_FILE = "training_state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found, read or applied."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=False).encode())


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor that trains, detached and contiguous, keyed by parameter name."""
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(directory: Path, model: nn.Module, record: dict[str, Any]) -> None:
    """Write the trained tensors and the record into ``directory`` (files written atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = trainable_state_dict(model)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{ADAPTER_FILE}.")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "medpeft-adapter"})
        os.replace(tmp, directory / ADAPTER_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    record = dict(record, trainable={n: list(t.shape) for n, t in tensors.items()})
    atomic_write_json(directory / RECORD_FILE, record)


def save_training_state(directory: Path, state: dict[str, Any]) -> None:
    """``torch.save`` the optimizer/scheduler/progress state atomically (loadable with weights_only)."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{STATE_FILE}.")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, directory / STATE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_training_state(directory: Path) -> dict[str, Any]:
    return torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)


def read_record(directory: Path) -> dict[str, Any]:
    path = directory / RECORD_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{directory} is not a medpeft checkpoint: {RECORD_FILE} is missing") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def load_adapter_tensors(model: nn.Module, directory: Path) -> None:
    """Load trained tensors into a model built and adapted as recorded; keys must match exactly."""
    path = directory / ADAPTER_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: {ADAPTER_FILE} is missing")
    tensors = load_file(str(path))
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, extra = expected - set(tensors), set(tensors) - expected
    if missing or extra:
        raise CheckpointError(
            f"{path} does not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            if params[name].shape != value.shape:
                raise CheckpointError(
                    f"{path}: {name} has shape {list(value.shape)}, model expects {list(params[name].shape)}"
                )
            params[name].copy_(value)


def commit_checkpoint(run_dir: Path, ckpt_dir: Path, pointer: str, keep: set[Path] | None = None) -> None:
    """Point ``run_dir/<pointer>.json`` at a complete checkpoint and drop unreferenced older ones."""
    atomic_write_json(run_dir / f"{pointer}.json", {"checkpoint": str(ckpt_dir.relative_to(run_dir))})
    referenced = {resolve_pointer(run_dir, p) for p in ("last", "best")} | (keep or set())
    for old in (run_dir / "checkpoints").glob("step-*"):
        if old not in referenced:
            shutil.rmtree(old, ignore_errors=True)


def resolve_pointer(run_dir: Path, pointer: str) -> Path | None:
    path = run_dir / f"{pointer}.json"
    if not path.is_file():
        return None
    return run_dir / json.loads(path.read_text())["checkpoint"]


def resolve_checkpoint(path: Path | str, prefer: str = "best") -> Path:
    """Accept a checkpoint directory or a run directory (its best, else last, checkpoint)."""
    path = Path(path)
    if (path / RECORD_FILE).is_file():
        return path
    for pointer in (prefer, "last" if prefer == "best" else "best"):
        ckpt = resolve_pointer(path, pointer)
        if ckpt is not None and (ckpt / RECORD_FILE).is_file():
            return ckpt
    raise CheckpointError(
        f"no medpeft checkpoint at {path} (expected {RECORD_FILE} or a run directory with best.json)"
    )
