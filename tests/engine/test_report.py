"""report.html: every table row and image is present; per-method learning rates reach the optimizer."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_shapes_dataset, tiny_config_dict
from medpeft.cli import app
from medpeft.config import parse_config
from medpeft.engine.build import build_model, build_optimizer
from medpeft.engine.html_report import write_report
from medpeft.engine.restore import load_trained
from medpeft.engine.trainer import train
from medpeft.tasks.segmentation import build_dataset, build_splits
from medpeft.tasks.segmentation_eval import evaluate


class _Page(HTMLParser):
    """Collects table rows (cell texts) and embedded images of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.images: list[dict[str, str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    data = make_shapes_dataset(root / "shapes", n=12)
    cfg = parse_config(tiny_config_dict(data, root / "run", epochs=2))
    train(cfg, progress=False)
    splits = build_splits(cfg)
    base, _ = build_model(cfg, splits.label_names)
    model, record, cfg = load_trained(root / "run")
    dataset = build_dataset(cfg, splits.test + splits.val, record.label_names, train=False)
    evaluate(base.eval(), dataset, "box", root / "run" / "zero-shot-box", progress=False)
    evaluate(model, dataset, "box", root / "run" / "eval-test-box", progress=False)
    return root / "run"


def test_report_holds_every_row_and_image(evaluated_run: Path) -> None:
    page = _Page()
    page.feed(write_report(evaluated_run).read_text())
    cells = {row[0]: row for row in page.rows if row}
    assert cells["base model"][1].startswith("sam-tiny") and "lora" in cells["method"][1]
    assert "%" in cells["trainable parameters"][1] and "KiB" in cells["adapter file"][1]

    summary = json.loads((evaluated_run / "eval-test-box" / "summary.json").read_text())
    before = json.loads((evaluated_run / "zero-shot-box" / "summary.json").read_text())
    table = [r for r in page.rows if r and r[0] in ("disc", "square", "mean")]
    assert [r[0] for r in table] == ["disc", "square", "mean"]
    for row in table:
        s = summary["mean"] if row[0] == "mean" else summary["per_class"][row[0]]
        b = before["mean"] if row[0] == "mean" else before["per_class"][row[0]]
        assert row[2] == f"{s['dice']:.3f}" and row[3] == f"{s['iou']:.3f}"
        assert row[6] == f"{b['dice']:.3f}"  # before-vs-after columns

    cases = json.loads((evaluated_run / "eval-test-box" / "overlays.json").read_text())
    assert {(c["label"], c["rank"]) for c in cases} == {
        (n, r) for n in ("disc", "square") for r in ("best", "median", "worst")
    }
    alts = [img["alt"] for img in page.images]
    assert "training curves" in alts and all(c["image"] in alts for c in cases)
    assert len(page.images) == 1 + len(cases)
    for img in page.images:
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_command(evaluated_run: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(evaluated_run)])
    assert result.exit_code == 0 and "report.html" in result.output
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no medpeft checkpoint" in result.output


def test_a_method_lr_applies_to_its_tensors_only(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", n=6)
    raw = tiny_config_dict(data, tmp_path / "run")
    raw["adapters"] = [{"name": "lora", "r": 2, "lr": 5e-3}, {"name": "decoder"}]
    cfg = parse_config(raw)
    model, _ = build_model(cfg, ["disc", "square"])
    optimizer = build_optimizer(cfg, model)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert lr_of[id(p)] == (5e-3 if "lora_" in name else cfg.train.lr), name
