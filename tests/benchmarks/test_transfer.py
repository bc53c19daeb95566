"""Plumbing of benchmarks/transfer.py on tiny synthetic data (sam-tiny, 64 px, a few steps)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_shapes_dataset, tiny_config_dict

ROOT = Path(__file__).resolve().parents[2]


def _load_transfer():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # as when run as a script: its sibling modules import
    spec = importlib.util.spec_from_file_location("transfer_benchmark", ROOT / "benchmarks" / "transfer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["transfer_benchmark"] = module
    spec.loader.exec_module(module)
    return module


transfer = _load_transfer()
TINY = [
    "--image-size",
    "64",
    "--steps",
    "4",
    "--validations",
    "2",
    "--batch-size",
    "4",
    "--galore-rank",
    "8",
    "--threads",
    "1",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = make_shapes_dataset(tmp_path_factory.mktemp("target") / "shapes", n=24, size=64, big=True)
    out = tmp_path_factory.mktemp("transfer")
    rep = transfer.main(
        ["sam-tiny", str(root), "--shots", "6", "--seeds", "2", "--in-process", "--out", str(out), *TINY]
    )
    return rep, out, root


def test_every_method_runs_and_reports_every_field(report):
    rep, out, _ = report
    methods = {r["method"] for r in rep["runs"]}
    assert methods == set(transfer.METHODS)
    assert len(rep["runs"]) == 2 * len(transfer.METHODS)  # two seeds
    for r in rep["runs"]:
        assert set(transfer.RESULT_FIELDS) <= set(r), r["method"]
        assert r["train_images"] == 6
        for key in ("dice_box", "dice_auto"):
            assert math.isnan(r[key]) or 0.0 <= r[key] <= 1.0
        # automatic mode needs a label prompt with two classes; the U-Net takes no box
        assert math.isnan(r["dice_auto"]) == (r["method"] in ("zero_shot", "ssam"))
        assert math.isnan(r["dice_box"]) == (r["method"] == "unet")
    written = json.loads((out / "results.json").read_text())  # strict JSON: NaN became null
    assert [r["method"] for r in written["runs"]] == [r["method"] for r in rep["runs"]]
    for e in written["summary"]:
        assert e["seeds"] == 2 and "dice_box_std" in e and "peak_rss_mib" in e


def test_trainable_counts_follow_the_methods(report):
    rep, _, _ = report
    by = {r["method"]: r for r in rep["runs"] if r["seed"] == 0}
    total = by["full"]["total_params"]
    assert by["zero_shot"]["trainable"] == 0 and by["zero_shot"]["steps"] == 0
    assert by["full"]["trainable"] > 0.99 * total  # everything but nothing frozen (class prompt included)
    assert 0 < by["layernorm"]["trainable"] < by["decoder"]["trainable"] < by["lora"]["trainable"] < total
    assert by["ssam_text"]["trainable"] > by["ssam"]["trainable"]  # the label prompts train too
    assert by["galore_srft"]["trainable"] == by["galore_svd"]["trainable"]
    assert by["galore_srft"]["optimizer_state"] < 2 * by["galore_srft"]["trainable"]  # low-rank moments
    assert math.isnan(by["unet"]["dice_box"])  # the U-Net takes no prompts: automatic mode only
    for m in ("decoder", "lora", "full"):
        assert by[m]["adapter_bytes"] > 0 and by[m]["steps"] >= 4


def test_plot_and_table_written(report):
    _, out, _ = report
    png = out / "dice_vs_params.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "table.md").read_text()
    for m in transfer.METHODS:
        assert f"| {m} |" in table


def test_shots_split_keeps_val_and_test_fixed(report, tmp_path):
    _, out, root = report
    a = json.loads((out / "splits" / "shots-6-seed-0.json").read_text())
    b = json.loads((out / "splits" / "shots-6-seed-1.json").read_text())
    assert a["val"] == b["val"] and a["test"] == b["test"]
    assert a["train"] != b["train"] and len(a["train"]) == len(b["train"]) == 6
    assert not set(a["train"]) & set(a["test"]) and not set(a["train"]) & set(a["val"])


def test_unet_baseline_learns_through_the_training_loop(tmp_path):
    from medpeft.config import parse_config
    from medpeft.engine.restore import load_trained
    from medpeft.engine.trainer import train
    from medpeft.tasks.base import make_task

    torch.set_num_threads(1)
    root = make_shapes_dataset(tmp_path / "shapes", n=20, size=64, big=True)
    cfg = tiny_config_dict(root, tmp_path / "unet", epochs=15, lr=3e-3)
    cfg["model"] = {"base": "unet", "image_size": 64, "class_prompt": "none"}
    cfg["adapters"] = [{"name": "full"}]
    cfg["prompts"] = {"train_modes": {"auto": 1.0}, "eval_mode": "auto"}
    result = train(parse_config(cfg), progress=False)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    model, _, loaded = load_trained(result.run_dir)  # the best checkpoint reproduces its validation score
    task = make_task(loaded)
    assert result.best_dice == pytest.approx(
        task.validate(model, task.dataset(task.splits().val, model.label_names, False)), abs=1e-6
    )
    assert result.best_dice > 0.3


def test_subprocess_worker_and_medpeft_run_as_source(tmp_path):
    """A medpeft training run as SOURCE is merged into a base model dir; jobs run in subprocesses."""
    from conftest import tiny_config_dict
    from medpeft.config import parse_config
    from medpeft.engine.trainer import train

    root = make_shapes_dataset(tmp_path / "shapes", n=16, size=64, big=True)
    cfg = tiny_config_dict(root, tmp_path / "foundation")
    cfg["adapters"] = [{"name": "full"}]
    cfg["train"]["epochs"] = 1
    train(parse_config(cfg), progress=False)
    out = tmp_path / "out"
    rep = transfer.main(
        [
            str(tmp_path / "foundation"),
            str(root),
            "--shots",
            "4",
            "--methods",
            "zero_shot",
            "lora",
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert (out / "base_model" / "config.json").is_file()
    assert rep["base_model"] == str(out / "base_model")
    assert [r["method"] for r in rep["runs"]] == ["zero_shot", "lora"]
    assert rep["runs"][1]["peak_rss_mib"] > 50
