"""Adapter checkpoints: only trained tensors (safetensors) plus a JSON record, each checkpoint complete or absent.

Layout of a run directory::

    run/.medpeft-run                        marker: medpeft made this folder (only such folders are replaced)
    run/checkpoints/step-000120/{adapter.safetensors, training_state.pt, adapter.json}
    run/last.json  run/best.json            pointers, replaced atomically after a checkpoint is complete

A checkpoint is written whole into a temporary folder and renamed into place, so a kill at any moment
leaves either the complete checkpoint or none; a folder that a pointer names is never rewritten. The
record (``adapter.json``) holds the SHA-256 of every other file, the step and the epoch, so a loader
detects a truncated, corrupted or mismatched file instead of loading it. No checkpoint holds a
non-finite tensor.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from medpeft.engine.record import AdapterRecord, RecordError

ADAPTER_FILE = "adapter.safetensors"
RECORD_FILE = "adapter.json"
STATE_FILE = "training_state.pt"
RUN_MARKER = ".medpeft-run"
POINTERS = ("last", "best")
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found, read, verified or applied."""


class NonFiniteCheckpoint(CheckpointError):
    """A checkpoint was about to store a NaN or infinite tensor."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some file systems do not open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_TMP_PREFIX}{path.name}-")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor that trains, detached and contiguous, keyed by parameter name."""
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def non_finite_tensors(tree: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a nested dict/list that hold NaN or infinity."""
    if isinstance(tree, torch.Tensor):
        bad = tree.is_floating_point() and not bool(torch.isfinite(tree).all())
        return [prefix or "tensor"] if bad else []
    items: Iterable[tuple[Any, Any]] = ()
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    return [name for k, v in items for name in non_finite_tensors(v, f"{prefix}.{k}" if prefix else str(k))]


def write_checkpoint(
    directory: Path,
    model: nn.Module,
    record: AdapterRecord,
    state: dict[str, Any] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a complete checkpoint to ``directory`` (a new folder; never one a pointer names).

    ``record`` carries the step and epoch; ``state`` (optimizer, scheduler, progress) is stored
    beside the tensors for ``--resume``; ``tensors``: the trained tensors when the model's own are
    shards (FSDP). Raises :class:`NonFiniteCheckpoint` before writing anything when a tensor is NaN
    or infinite.
    """
    tensors = trainable_state_dict(model) if tensors is None else tensors
    bad = non_finite_tensors(tensors) + [f"training state {n}" for n in non_finite_tensors(state or {})]
    if bad:
        raise NonFiniteCheckpoint(
            f"not saving {directory.name}: non-finite values in {', '.join(bad[:3])}"
            + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        )
    run_dir = directory.parent.parent
    if directory.exists():
        if directory in pointed_checkpoints(run_dir):
            raise CheckpointError(f"refusing to rewrite {directory}: a pointer names it")
        shutil.rmtree(directory)  # an unreferenced leftover of a killed run, at a step being redone
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f"{_TMP_PREFIX}{directory.name}-"))
    try:
        files = {ADAPTER_FILE: lambda p: save_file(tensors, p, metadata={"format": "medpeft-adapter"})}
        if state is not None:
            files[STATE_FILE] = lambda p: torch.save(state, p)
        hashes = {}
        for name, write in files.items():
            write(str(tmp / name))
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())
            hashes[name] = file_sha256(tmp / name)
        full = replace(record, trainable={n: list(t.shape) for n, t in tensors.items()}, files=hashes)
        atomic_write_json(tmp / RECORD_FILE, full.to_json())
        _fsync_dir(tmp)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(directory.parent)
    return directory


def read_record(directory: Path) -> AdapterRecord:
    """The checkpoint's record, checked for the keys every loader relies on."""
    path = directory / RECORD_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{directory} is not a medpeft checkpoint: {RECORD_FILE} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt") from None
    try:
        parsed = AdapterRecord.from_json(record, str(path))
    except (RecordError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(str(e) if isinstance(e, ValueError) else f"{path}: {e!r}") from None
    if ADAPTER_FILE not in parsed.files:
        raise CheckpointError(f"{path}: 'files' must hold the SHA-256 of {ADAPTER_FILE}")
    return parsed


def verify_files(directory: Path, record: AdapterRecord, names: Iterable[str]) -> None:
    """Check that each named file exists and has the SHA-256 the record gives."""
    for name in names:
        path = directory / name
        expected = record.files.get(name)
        if expected is None:
            raise CheckpointError(f"{directory / RECORD_FILE} records no hash for {name}")
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        if file_sha256(path) != expected:
            raise CheckpointError(
                f"{path} is incomplete or corrupt (its SHA-256 differs from the one in {RECORD_FILE})"
            )


def load_adapter_tensors(model: nn.Module, directory: Path, record: AdapterRecord | None = None) -> None:
    """Load verified trained tensors into a model built and adapted as recorded; keys must match exactly."""
    record = record or read_record(directory)
    verify_files(directory, record, [ADAPTER_FILE])
    path = directory / ADAPTER_FILE
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} cannot be read ({e}); the file is corrupt") from None
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


def load_training_state(directory: Path, record: AdapterRecord | None = None) -> dict[str, Any]:
    """The verified optimizer/scheduler/progress state; its step and epoch must match the record's."""
    record = record or read_record(directory)
    verify_files(directory, record, [STATE_FILE])
    path = directory / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}); the file is corrupt") from None
    if (state.get("step"), state.get("epoch")) != (record.step, record.epoch):
        raise CheckpointError(
            f"{directory}: {STATE_FILE} is of step {state.get('step')} epoch {state.get('epoch')} but "
            f"{RECORD_FILE} of step {record.step} epoch {record.epoch}; the files do not belong together"
        )
    return state


def verify_checkpoint(directory: Path, with_state: bool = True) -> AdapterRecord:
    """Read the record and check every file's hash (and the state's step/epoch); returns the record."""
    record = read_record(directory)
    verify_files(directory, record, [n for n in record.files if with_state or n != STATE_FILE])
    if with_state:
        load_training_state(directory, record)
    return record


def resolve_pointer(run_dir: Path | str, pointer: str) -> Path | None:
    """The checkpoint ``run_dir/<pointer>.json`` names, or None when there is no such pointer."""
    run_dir = Path(run_dir)
    path = run_dir / f"{pointer}.json"
    if not path.is_file():
        return None
    try:
        target = json.loads(path.read_text())["checkpoint"]
        if not isinstance(target, str):
            raise TypeError
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise CheckpointError(
            f'{path} is not a checkpoint pointer (expected {{"checkpoint": "checkpoints/step-N"}}); '
            "it is corrupt: delete it to fall back to the other pointer"
        ) from None
    directory = run_dir / target
    if not (directory / RECORD_FILE).is_file():
        raise CheckpointError(f"{path} names {directory}, which is not a checkpoint")
    return directory


def pointed_checkpoints(run_dir: Path) -> set[Path]:
    return {p for p in (resolve_pointer(run_dir, name) for name in POINTERS) if p is not None}


def step_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, newest step first (complete or not; temporary folders excluded)."""
    folder = Path(run_dir) / "checkpoints"
    return sorted((p for p in folder.glob("step-*") if step_of(p) >= 0), key=step_of, reverse=True)


def step_of(directory: Path) -> int:
    m = _STEP_DIR.match(directory.name)
    return int(m.group(1)) if m else -1


def previous_complete(run_dir: Path, before: Path | None = None) -> Path | None:
    """The newest fully verified checkpoint older than ``before`` (any, when None)."""
    for directory in step_checkpoints(run_dir):
        if before is not None and step_of(directory) >= step_of(before):
            continue
        try:
            verify_checkpoint(directory)
        except CheckpointError:
            continue
        return directory
    return None


def commit_checkpoint(run_dir: Path, ckpt_dir: Path, pointers: Iterable[str] = ("last",)) -> None:
    """Point each of ``pointers`` at a complete checkpoint, then drop checkpoints nothing needs.

    Kept: what ``last`` and ``best`` name, and the checkpoint ``last`` named before (a fallback should
    the newest one be damaged later).
    """
    previous_last = resolve_pointer(run_dir, "last")
    # "last" moves last: a kill between two switches must not leave last at a checkpoint whose
    # improvement best.json never recorded (--resume continues from last and would never redo it)
    for pointer in sorted(pointers, key=lambda p: p == "last"):
        atomic_write_json(run_dir / f"{pointer}.json", {"checkpoint": str(ckpt_dir.relative_to(run_dir))})
    keep = pointed_checkpoints(run_dir) | {previous_last}
    for old in step_checkpoints(run_dir):
        if old not in keep:
            shutil.rmtree(old, ignore_errors=True)


def remove_stale_files(run_dir: Path) -> list[Path]:
    """Delete temporary files and folders a kill left behind mid-write; returns what was removed."""
    removed = []
    for folder in (run_dir, run_dir / "checkpoints", *step_checkpoints(run_dir)):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name.startswith(_TMP_PREFIX):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                removed.append(path)
    return removed


def resolve_checkpoint(path: Path | str, prefer: str = "best") -> Path:
    """Accept a checkpoint directory or a run directory (its best, else last, checkpoint)."""
    path = Path(path)
    if (path / RECORD_FILE).is_file():
        return path
    for pointer in (prefer, "last" if prefer == "best" else "best"):
        ckpt = resolve_pointer(path, pointer)
        if ckpt is not None:
            return ckpt
    raise CheckpointError(
        f"no medpeft checkpoint at {path} (expected {RECORD_FILE} or a run directory with best.json or last.json)"
    )
