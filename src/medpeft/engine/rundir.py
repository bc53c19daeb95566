"""Run directories: created with a marker, replaced only when medpeft made them and no data lives inside."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from medpeft import __version__
from medpeft.engine import checkpoint as ckpt


class RunDirExists(FileExistsError):
    """The output directory holds a user's earlier run or files medpeft did not make."""


def is_medpeft_run(run_dir: Path) -> bool:
    return (run_dir / ckpt.RUN_MARKER).is_file()


def has_checkpoints(run_dir: Path) -> bool:
    return any((run_dir / f"{p}.json").exists() for p in ckpt.POINTERS) or bool(
        ckpt.step_checkpoints(run_dir)
    )


def _contains(folder: Path, paths: Iterable[Path]) -> Path | None:
    folder = folder.resolve()
    for path in paths:
        resolved = path.expanduser().resolve()
        if resolved == folder or folder in resolved.parents:
            return path
    return None


def check_replaceable(run_dir: Path, overwrite: bool, protected: Iterable[Path] = ()) -> bool:
    """Whether ``run_dir`` must be emptied before a fresh run; raises when that is not allowed.

    Empty or absent: nothing to do. A medpeft run that never saved a checkpoint (it failed at its start)
    is restarted. Anything else needs ``overwrite``, and even then only a folder with medpeft's marker
    that holds none of the ``protected`` paths (the configured data) is deleted.
    """
    if not run_dir.exists():
        return False
    if not run_dir.is_dir():
        raise RunDirExists(f"output directory {run_dir} is a file; set train.output_dir to a folder")
    if not any(run_dir.iterdir()):
        return False
    inside = _contains(run_dir, protected)
    if inside is not None:
        raise RunDirExists(
            f"output directory {run_dir} contains the configured data ({inside}); "
            "refusing to use it for a run: set train.output_dir elsewhere"
        )
    if not is_medpeft_run(run_dir):
        raise RunDirExists(
            f"output directory {run_dir} holds files medpeft did not create (no {ckpt.RUN_MARKER} marker); "
            "refusing to replace it even with --overwrite: set train.output_dir to a new folder"
        )
    if not has_checkpoints(run_dir):
        return True
    if not overwrite:
        raise RunDirExists(
            f"output directory {run_dir} already holds a run; pass --resume to continue it "
            "or --overwrite to replace it (or set train.output_dir)"
        )
    return True


def create_run_dir(run_dir: Path, replace: bool) -> None:
    """Empty (when ``replace``, checked by :func:`check_replaceable`) and create the run folder with its marker."""
    if replace:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_json(run_dir / ckpt.RUN_MARKER, {"created_by": "medpeft", "version": __version__})


def data_paths(cfg) -> list[Path]:
    """Every path the config reads data from (a run folder must never contain one of them)."""
    data = cfg.data
    paths = [p for p in (data.root, data.split_file) if p is not None]
    for source in data.sources or []:
        if source.root is not None:
            paths.append(Path(source.root))
        for pattern in (source.volume, source.label_map, source.label_table):
            if pattern:
                head = pattern.split("#")[0].split("{")[0].split("*")[0]
                if head:
                    paths.append(Path(head))
    return paths
