"""Config parsing: defaults, overrides and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from medpeft.config import ConfigError, load_config, method_configs, parse_config


def test_defaults_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.001\nadapters:\n  - {name: lora, r: 8}\n")
    cfg = load_config(path, ["train.batch_size=3", "model.image_size=128"])
    assert cfg.train.lr == 0.001 and cfg.train.batch_size == 3 and cfg.model.image_size == 128
    ((name, lora),) = method_configs(cfg.adapters)
    assert name == "lora" and lora.r == 8 and lora.alpha is None


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.lrr=1", "unknown config key 'train.lrr'; valid keys here: output_dir, epochs"),
        ("modle.base=x", "unknown config key 'modle'"),
        ("model.image_size=250", "multiple of 16"),
        ("data.split=[0.5,0.5,0.5]", "summing to 1"),
        ("adapters=[{name: lora, rank: 4}]", "adapters[0] (lora): unknown key 'rank'; valid keys: r, alpha"),
        (
            "adapters=[{name: nope}]",
            "unknown adaptation method 'nope'; expected one of: attention_weights, bias, decoder, full",
        ),
        ("prompts.eval_mode=circle", "prompts.eval_mode"),
        ("train.distributed=zero3", "train.distributed"),
    ],
)
def test_errors_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_fsdp_refuses_galore() -> None:
    """GaLore projects whole weight matrices; FSDP hands each process a slice of them."""
    with pytest.raises(ConfigError, match="GaLore projects whole matrices; use ddp"):
        load_config(None, ["train.distributed=fsdp", "optimizer.name=galore_adamw"])


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.lr"])


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).resolve().parents[1].glob("configs/**/*.yaml")), ids=lambda p: p.name
)
def test_shipped_configs_parse(path: Path) -> None:
    cfg = load_config(path)
    from medpeft.tasks.base import TASK_NAMES

    assert (
        cfg.model.backbone in ("sam", "sam2", "depth_anything", "unet", "segvol") and cfg.task in TASK_NAMES
    )


def test_depth_guided_config_errors_name_the_key() -> None:
    cfg = parse_config({"model": {"base": "sam2-tiny", "depth_guided": {"depth_source": "file"}}})
    assert cfg.model.depth_guided.residual and cfg.model.depth_guided.direction == "depth_queries_rgb"
    cases = [
        (
            {"model": {"base": "depth-anything-tiny", "depth_guided": {}}},
            "model.depth_guided: fuses depth into a SAM or SAM2",
        ),
        ({"model": {"depth_guided": {"width": 30, "heads": 4}}}, "width 30 must be divisible by heads 4"),
        (
            {"model": {"depth_guided": {"depth_adapters": [{"name": "lorax"}]}}},
            "depth_adapters[0]: unknown adaptation method",
        ),
        ({"model": {"depth_guided": {"fusion": "x"}}}, "unknown config key 'model.depth_guided.fusion'"),
        (
            {"model": {"depth_guided": {"output": "softmax"}}, "data": {"classes_per_image": 1}},
            "softmax needs every class in every item",
        ),
        ({"data": {"line_width": 4}}, "data.line_width: must be odd"),
    ]
    for data, message in cases:
        with pytest.raises(ConfigError) as err:
            parse_config(data)
        assert message in str(err.value), str(err.value)
