"""A source collection: several 2D datasets and 3D volumes read as one, each image knowing its labels.

Foundation training mixes datasets that annotate different structures (polyps, abdominal organs,
brain tumours). The union of their label names is the label list; every record carries
``annotated`` (the labels of its own source), so a polyp image is not taught that the liver is
absent. Volumes are cut into axial (or ``axis``) slices once and cached as a folder dataset under
``$MEDPEFT_CACHE`` (default ``~/.cache/medpeft``), keyed by the files and the slicing settings.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from medpeft.config import SourceConfig

from .formats.folder import read_folder_dataset
from .io import DataError
from .labels import parse_labels_json
from .readers import read_dataset
from .records import ImageRecord
from .splits import split_records
from .volumes import _volume_stem, export_slices

SLICE_CACHE_VERSION = 1


def cache_dir() -> Path:
    """Where derived data (volume slices) is cached: ``$MEDPEFT_CACHE`` or ``~/.cache/medpeft``."""
    return Path(os.environ.get("MEDPEFT_CACHE") or Path.home() / ".cache" / "medpeft")


def volume_groups(source: SourceConfig) -> dict[str, list[int]]:
    """Label name -> label-map values of a volume source (``label_table`` and/or ``label_values``)."""
    groups: dict[str, list[int]] = {}
    if source.dataset is not None:
        from .volume_io import read_volume_dataset

        groups = {name: [value] for value, name in sorted(read_volume_dataset(source.dataset)[1].items())}
    if source.label_table is not None:
        path, _, key = source.label_table.partition("#")
        for value, name in parse_labels_json(Path(path), key or None).items():
            groups[name] = [value]
    for name, values in (source.label_values or {}).items():
        groups[name] = list(values)
    if source.labels is not None:
        unknown = [n for n in source.labels if n not in groups]
        if unknown:
            raise DataError(
                f"unknown label(s) {unknown} for volume {source.volume}; valid labels: {list(groups)}"
            )
        groups = {n: groups[n] for n in source.labels}
    if not groups:
        raise DataError(f"volume source {source.volume} selects no label")
    return groups


def volume_pairs(source: SourceConfig) -> list[tuple[Path, Path]]:
    if source.dataset is not None:
        from .volume_io import read_volume_dataset

        return [(img, lab) for img, lab in read_volume_dataset(source.dataset)[0] if lab is not None]
    assert source.volume is not None and source.label_map is not None
    matches = sorted(glob.glob(source.volume)) if glob.has_magic(source.volume) else [source.volume]
    if not matches:
        raise DataError(f"volume pattern {source.volume!r} matches no file")
    pairs = []
    for m in matches:
        vol = Path(m)
        if not vol.exists():
            raise DataError(f"volume file not found: {vol}")
        lab = Path(source.label_map.format(dir=vol.parent, stem=_volume_stem(vol)))
        if not lab.exists():
            raise DataError(f"label map {lab} (for volume {vol}) not found")
        pairs.append((vol, lab))
    return pairs


def _fingerprint(path: Path) -> list[object]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _slice_stem(source: SourceConfig, volume: Path) -> str:
    """Slice name prefix: the file stem, plus the folder name when a pattern matches many volumes
    (BRATS names every subject's file alike)."""
    stem = _volume_stem(volume)
    many = source.dataset is not None or (source.volume and glob.has_magic(source.volume))
    return f"{volume.parent.name}_{stem}" if many else stem


def slice_volume(source: SourceConfig, volume: Path, label_map: Path, groups: dict[str, list[int]]) -> Path:
    """The cached folder dataset of one volume's slices (exported on first use, atomically)."""
    stem = _slice_stem(source, volume)
    key = json.dumps(
        [
            SLICE_CACHE_VERSION,
            _fingerprint(volume),
            _fingerprint(label_map),
            groups,
            source.axis,
            source.step,
            source.window,
            source.min_foreground_pixels,
            source.max_slices,
            stem,
        ]
    )
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    out = cache_dir() / "slices" / f"{stem}-{digest}"
    if (out / "labels.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    try:
        export_slices(
            volume,
            label_map,
            tmp,
            {},
            axis=source.axis,
            step=source.step,
            min_foreground_pixels=source.min_foreground_pixels,
            window=source.window,
            max_slices=source.max_slices,
            groups=groups,
            stem=stem,
        )
        try:
            tmp.rename(out)
        except OSError:  # another process exported it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_source(source: SourceConfig) -> tuple[list[ImageRecord], list[str]]:
    """Records of one source, each marked with the labels it is annotated for."""
    if source.root is not None:
        records, labels = read_dataset(source.root, format=source.format, labels=source.labels)
    else:
        groups = volume_groups(source)
        records = []
        for vol, lab in volume_pairs(source):
            folder = slice_volume(source, vol, lab, groups)
            recs, _ = read_folder_dataset(folder, check_sizes=False)
            records += recs
        labels = list(groups)
    annotated = tuple(labels)
    return [replace(r, annotated=annotated) for r in records], labels


def read_collection(
    sources: list[SourceConfig], split: tuple[float, float, float], seed: int
) -> tuple[dict[str, list[ImageRecord]], list[str]]:
    """Read every source, split each one by ``split`` (so each is in val and test too), and merge.

    Returns the ``train`` / ``val`` / ``test`` records (training records of a source with
    ``repeat: n`` appear n times) and the union of label names in first-seen order.
    """
    if not sources:
        raise DataError("data.sources is empty: list at least one dataset or volume")
    parts: dict[str, list[ImageRecord]] = {"train": [], "val": [], "test": []}
    labels: list[str] = []
    for i, source in enumerate(sources):
        records, names = read_source(source)
        if not records:
            raise DataError(
                f"data.sources[{i}] ({source.root or source.volume or source.dataset}) holds no image"
            )
        labels += [n for n in names if n not in labels]
        fractions = source.split or split
        if source.dataset is not None:  # a volume dataset: whole subjects per split, none straddles them
            folders = split_records(
                sorted({r.image.parent.parent for r in records}), fractions, seed=seed + i
            )
            split_i = {k: [r for r in records if r.image.parent.parent in set(v)] for k, v in folders.items()}
        else:
            split_i = split_records(records, fractions, seed=seed + i)
        parts["train"] += split_i["train"] * source.repeat
        parts["val"] += split_i["val"]
        parts["test"] += split_i["test"]
    return parts, labels
