"""The backbone registry: which family a source belongs to, size rules, and loading from folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from medpeft.backbones import available_backbones, backbone_for, get_backbone


def test_every_family_is_registered_with_a_task() -> None:
    assert available_backbones() == ["depth_anything", "sam", "sam2", "segvol", "unet", "unet3d"]
    tasks = {get_backbone(n).task for n in available_backbones()}
    assert tasks == {"segmentation", "depth", "volume_segmentation"}
    with pytest.raises(
        KeyError,
        match="unknown backbone 'vit'; expected one of: depth_anything, sam, sam2, segvol, unet, unet3d",
    ):
        get_backbone("vit")


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("sam-tiny", "sam"),
        ("sam-mini-med", "sam"),
        ("facebook/sam-vit-huge", "sam"),
        ("wanglab/medsam-vit-base", "sam"),
        ("sam2-mini", "sam2"),
        ("facebook/sam2.1-hiera-large", "sam2"),
        ("/models/sam2.1_hiera_small.pt", "sam2"),
        ("depth-anything-tiny-metric", "depth_anything"),
        ("depth-anything/Depth-Anything-V2-Metric-Indoor-Base-hf", "depth_anything"),
        ("/models/depth_anything_v2_vitl.pth", "depth_anything"),
        ("unet", "unet"),
        ("segvol-mini", "segvol"),
        ("/models/SegVol_v1.pth", "segvol"),
        ("unet3d", "unet3d"),
    ],
)
def test_sources_are_claimed_by_their_family(source: str, name: str) -> None:
    assert backbone_for(source).name == name


@pytest.mark.parametrize(
    ("backbone", "size", "rule", "nearest"),
    [
        ("sam", 250, "multiple of 16", "240 and 256"),
        ("sam2", 300, "multiple of 32", "288 and 320"),
        ("depth_anything", 500, "multiple of 14", "490 and 504"),
        ("sam", 8, "multiple of 16", "16 and 32"),
    ],
)
def test_size_rules_name_the_nearest_valid_sizes(backbone: str, size: int, rule: str, nearest: str) -> None:
    check = get_backbone(backbone).check_size
    with pytest.raises(ValueError, match=f"{rule}; nearest valid sizes are {nearest}"):
        check(size)
    assert check(int(nearest.split()[0])) == int(nearest.split()[0])


@pytest.mark.parametrize(
    ("backbone", "preset", "size"), [("sam2", "sam2-tiny", 64), ("depth_anything", "depth-anything-tiny", 56)]
)
def test_save_pretrained_folder_loads_as_the_same_weights(
    backbone: str, preset: str, size: int, tmp_path: Path
) -> None:
    entry = get_backbone(backbone)
    model, identity = entry.load(preset, size)
    model.save_pretrained(tmp_path / "saved")
    assert backbone_for(str(tmp_path / "saved")).name == backbone  # claimed by its config.json
    again, local = entry.load(str(tmp_path / "saved"), size)
    assert local.kind == "local" and not local.random_init and local.sha256 == identity.sha256


def test_missing_files_and_unknown_names_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SAM2 checkpoint '/no/such/sam2.1_hiera_tiny.pt' does not exist"):
        get_backbone("sam2").load("/no/such/sam2.1_hiera_tiny.pt", 256)
    with pytest.raises(ValueError, match="unknown Depth Anything base model 'depth-anything-huge'"):
        get_backbone("depth_anything").load("depth-anything-huge", 518)
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"0")
    with pytest.raises(ValueError, match="expected .pth or .pt"):
        get_backbone("sam2").load(str(odd), 256)


def test_a_name_no_family_has_lists_every_familys_presets() -> None:
    from medpeft.config import ConfigError, parse_config

    with pytest.raises(
        ConfigError, match=r"model\.base: unknown base model 'sam2-bogus': not a preset \(.*sam2: sam2-tiny"
    ):
        parse_config({"model": {"base": "sam2-bogus"}})
    assert backbone_for("owner/some-sam-finetune").name == "sam"  # an unclaimed hub id stays SAM's, as before
