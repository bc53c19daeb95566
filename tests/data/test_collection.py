"""Source collections: 2D datasets + sliced volumes, per-image annotated labels, class slots, masked loss."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import make_shapes_dataset, shared_data, tiny_config_dict
from medpeft.config import ConfigError, SourceConfig, parse_config
from medpeft.data.collection import read_collection, read_source
from medpeft.data.dataset import SegmentationDataset
from medpeft.data.io import DataError, load_masks
from medpeft.tasks.segmentation_loss import SegmentationLoss


def _volume(folder, name="vol", shape=(40, 40, 6), seed=0):
    """A NIfTI volume with a label map: value 1 a block, value 2 next to it, value 3 a small cube."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vol = rng.normal(0, 1, shape).astype(np.float32)
    seg = np.zeros(shape, np.uint8)
    seg[5:15, 5:20, :] = 1
    seg[15:25, 5:20, :] = 2
    seg[28:36, 28:36, 2:4] = 3
    vol[seg > 0] += 4
    nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 3.0, 1.0])), folder / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(seg, np.diag([1.5, 1.5, 3.0, 1.0])), folder / f"{name}_seg.nii.gz")
    return folder / f"{name}.nii.gz"


def _volume_source(path, **kw):
    return SourceConfig(
        volume=str(path),
        label_map="{dir}/{stem}_seg.nii.gz",
        label_values={"organ": [1, 2], "lesion": [3]},
        min_foreground_pixels=10,
        **kw,
    )


def test_volume_source_groups_values_and_marks_labels(tmp_path):
    vol = _volume(tmp_path / "v")
    records, labels = read_source(_volume_source(vol))
    assert labels == ["organ", "lesion"]
    assert len(records) == 6 and all(r.annotated == ("organ", "lesion") for r in records)
    masks = load_masks(records[2], labels)  # slice z=2 holds the cube
    assert masks[0].sum() == 20 * 15  # values 1 and 2 merged into "organ"
    assert masks[1].sum() == 8 * 8
    assert records[0].spacing == (1.5, 1.5)


def test_slices_are_cached_and_keyed_by_settings(tmp_path, monkeypatch):
    import medpeft.data.collection as collection

    vol = _volume(tmp_path / "v")
    first, _ = read_source(_volume_source(vol))
    calls = []
    monkeypatch.setattr(collection, "export_slices", lambda *a, **k: calls.append(a))
    again, _ = read_source(_volume_source(vol))
    assert not calls and [r.image for r in again] == [r.image for r in first]
    monkeypatch.undo()
    every_other, _ = read_source(_volume_source(vol, step=2))
    assert len(every_other) == 3 and every_other[0].image.parent != first[0].image.parent


def test_glob_names_slices_by_subject_folder(tmp_path):
    for subject in ("pat1", "pat2"):
        _volume(tmp_path / subject, name="flair", seed=len(subject))
    records, _ = read_source(_volume_source(tmp_path / "pat*" / "flair.nii.gz"))
    stems = {r.image.stem for r in records}
    assert len(stems) == 12 and all(s.startswith(("pat1_flair", "pat2_flair")) for s in stems)


def test_collection_unions_labels_splits_each_source_and_repeats(tmp_path):
    shapes = make_shapes_dataset(tmp_path / "shapes", n=20)
    vol = _volume(tmp_path / "v", shape=(40, 40, 20))
    sources = [SourceConfig(root=shapes), _volume_source(vol, repeat=3)]
    parts, labels = read_collection(sources, (0.6, 0.2, 0.2), seed=0)
    assert labels == ["disc", "square", "organ", "lesion"]
    from_volume = [r for r in parts["train"] if r.annotated == ("organ", "lesion")]
    assert len(from_volume) == 3 * 12 and len({r.image for r in from_volume}) == 12
    for split in ("val", "test"):  # every source reaches every split
        assert {r.annotated for r in parts[split]} == {("disc", "square"), ("organ", "lesion")}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"volume": "nowhere/*.nii.gz", "label_map": "x", "label_values": {"a": [1]}}, "matches no file"),
        (
            {"volume": "VOL", "label_map": "{dir}/missing.nii.gz", "label_values": {"a": [1]}},
            "missing.nii.gz",
        ),
        (
            {
                "volume": "VOL",
                "label_map": "{dir}/{stem}_seg.nii.gz",
                "label_values": {"a": [1]},
                "labels": ["b"],
            },
            "unknown label",
        ),
        (
            {
                "volume": "VOL",
                "label_map": "{dir}/{stem}_seg.nii.gz",
                "label_values": {"a": [1], "b": [1, 2]},
            },
            "in two labels",
        ),
    ],
)
def test_bad_volume_sources_name_the_problem(tmp_path, source, message):
    vol = _volume(tmp_path / "v")
    source = {k: (str(vol) if v == "VOL" else v) for k, v in source.items()}
    with pytest.raises(DataError, match=message):
        read_source(SourceConfig(**source))


def test_config_rejects_root_with_sources_and_half_sources():
    with pytest.raises(ConfigError, match="not both"):
        parse_config({"data": {"root": "a", "sources": [{"root": "b"}]}})
    with pytest.raises(ConfigError, match="exactly one of 'root'"):
        parse_config({"data": {"sources": [{"label_map": "x"}]}})
    with pytest.raises(ConfigError, match="label_table' or 'label_values"):
        parse_config({"data": {"sources": [{"volume": "v.nii.gz", "label_map": "s.nii.gz"}]}})


def test_class_slots_prefer_present_labels_and_pad(tmp_path):
    shapes = make_shapes_dataset(tmp_path / "shapes", n=6)
    vol = _volume(tmp_path / "v")
    parts, labels = read_collection([SourceConfig(root=shapes), _volume_source(vol)], (1.0, 0.0, 0.0), 0)
    ds = SegmentationDataset(parts["train"], labels, image_size=64, classes_per_image=3, augment=None)
    for i, rec in enumerate(ds.records):
        item = ds[i]
        ids, valid = item["class_ids"], item["class_valid"]
        allowed = {labels.index(n) for n in rec.annotated}
        assert set(ids[valid].tolist()) <= allowed and valid.sum() == min(3, len(allowed))
        assert not item["masks"][~valid].any()  # padding slots are empty and invalid
        present = [bool(m.any()) for m in item["masks"][valid]]
        assert present == sorted(present, reverse=True)  # present labels come first
        for slot, label in enumerate(ids.tolist()):  # each slot's mask is its label's mask
            if valid[slot]:
                full = ds.load_resized(i)[1][ds.annotated_ids(i).index(label)]
                assert torch.equal(item["masks"][slot].bool(), torch.from_numpy(full))
    # without slots: all C labels, unannotated ones invalid
    flat = SegmentationDataset(parts["train"], labels, image_size=64, augment=None)
    item = flat[0]
    assert item["masks"].shape[0] == 4
    assert item["class_valid"].tolist() == [labels[c] in flat.records[0].annotated for c in range(4)]


def test_loss_ignores_classes_an_image_is_not_annotated_for():
    from medpeft.config import LossConfig

    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 8, 8), (torch.rand(2, 3, 8, 8) > 0.5).float()
    valid = torch.tensor([[True, False, True], [True, True, False]])
    loss_fn = SegmentationLoss(LossConfig(dice=1.0, bce=1.0, focal=1.0))
    base, _ = loss_fn(logits, target, valid)
    changed = logits.clone()
    changed[0, 1] += 50.0
    changed[1, 2] -= 50.0
    assert torch.allclose(loss_fn(changed, target, valid)[0], base)
    assert not torch.allclose(loss_fn(changed, target)[0], loss_fn(logits, target)[0])
    changed[0, 0] += 5.0
    assert not torch.allclose(loss_fn(changed, target, valid)[0], base)


def test_foundation_style_training_on_a_collection_gives_a_loadable_base(tmp_path):
    from medpeft.backbones.sam.loading import load_sam
    from medpeft.engine.merge import merge_checkpoint
    from medpeft.engine.trainer import train

    shapes = make_shapes_dataset(tmp_path / "shapes", n=12, big=True)
    vol = _volume(tmp_path / "v", shape=(64, 64, 12))
    cfg = tiny_config_dict(None, tmp_path / "run", epochs=2)
    cfg["data"] = {
        "sources": [{"root": str(shapes)}, {**_volume_source(vol).model_dump(mode="json"), "repeat": 2}],
        "classes_per_image": 2,
        "split": [0.7, 0.15, 0.15],
    }
    cfg["adapters"] = [{"name": "full"}]
    cfg["prompts"] = {"train_modes": {"box": 0.5, "point": 0.25, "auto": 0.25}}
    result = train(parse_config(cfg), progress=False)
    assert result.steps == 2 * 6 and 0.0 <= result.best_dice <= 1.0
    assert result.best_checkpoint is not None
    merge_checkpoint(result.run_dir, tmp_path / "base")
    sam, identity = load_sam(str(tmp_path / "base"), 64)
    fresh, _ = load_sam("sam-tiny", 64)
    assert identity.kind != "preset"
    changed = [n for n, p in sam.state_dict().items() if not torch.equal(p, fresh.state_dict()[n])]
    assert any("vision_encoder" in n for n in changed) and any("mask_decoder" in n for n in changed)


def test_shared_foundation_collection_holds_out_the_target_subjects():
    shared_data("brats2015-sample")
    shared_data("kvasir-seg")
    from medpeft.config import load_config
    from medpeft.tasks.segmentation import build_splits

    cfg = load_config("configs/foundation_sam_mini.yaml")
    splits = build_splits(cfg)
    every = splits.train + splits.val + splits.test
    assert {"polyp", "liver", "edema", "enhancing_tumour"} <= set(splits.label_names)
    stems = {r.image.stem for r in every}
    assert not any("pat0001" in s or "pat0002" in s for s in stems)  # BRATS test subjects: the target
    assert not any("T1c" in s for s in stems)  # the collection sees Flair only
    assert sum("Flair" in s for s in stems) > 100 and sum(r.annotated == ("polyp",) for r in every) == 998
