"""``report.html``: one self-contained page (images embedded) summarising a run for a clinician.

It reads only what a run already wrote: the best (or last) checkpoint's record, ``curves.png``, and
every evaluation folder (``eval-*`` after fine-tuning, ``zero-shot-*`` before) with its
``summary.json`` and ``overlays.json``; so it can be rebuilt at any time with ``medpeft report``.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from medpeft.engine import checkpoint as ckpt

METRICS = (("dice", "Dice"), ("iou", "IoU"), ("assd", "ASSD"), ("hd95", "HD95"))
REPORT_FILE = "report.html"
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.up{color:#080}.down{color:#b00}
figure{display:inline-block;margin:4px;text-align:center;font-size:12px}figure img{width:220px}
.note{background:#fff6d5;padding:.5em 1em;border-left:4px solid #e0b000}
"""


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def evaluations(run_dir: Path, prefix: str) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Prompt mode -> (folder, summary) of the run's evaluations whose folder starts with ``prefix``."""
    found = {}
    for folder in sorted(run_dir.glob(f"{prefix}*")):
        summary = _load(folder / "summary.json")
        if isinstance(summary, dict) and "per_class" in summary:
            found[summary["prompt_mode"]] = (folder, summary)
    order = ("box", "box+point", "point", "auto")
    return dict(sorted(found.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def _class_table(summary: dict[str, Any], before: dict[str, Any] | None) -> str:
    units = summary.get("distance_units", "pixels")
    head = "".join(
        f"<th>{name}{' (' + units + ')' if key in ('assd', 'hd95') else ''}</th>" for key, name in METRICS
    )
    extra = "<th>Dice before</th><th>change</th>" if before else ""
    rows = [f"<tr><th>class</th><th>n</th>{head}{extra}</tr>"]
    items = [*summary["per_class"].items(), ("mean", {**summary["mean"], "n": summary["images"]})]
    for name, s in items:
        cells = "".join(f"<td>{_fmt(s.get(key))}</td>" for key, _ in METRICS)
        if before:
            b = (before["mean"] if name == "mean" else before["per_class"].get(name, {})).get("dice")
            delta = s.get("dice", math.nan) - b if isinstance(b, float) else math.nan
            cls = "up" if delta > 0 else "down"
            cells += f"<td>{_fmt(b)}</td><td class='{cls}'>{'+' if delta > 0 else ''}{_fmt(delta)}</td>"
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{s.get('n', '')}</td>{cells}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _overlay_grid(folder: Path) -> str:
    cases = _load(folder / "overlays.json") or []
    figures = []
    for case in cases:
        path = folder / case["file"]
        if path.is_file():
            caption = f"{case['label']}: {case['rank']} (Dice {_fmt(case['dice'])})<br>{case['image']}"
            figures.append(f"<figure>{_img(path, case['image'])}<figcaption>{caption}</figcaption></figure>")
    return "".join(figures)


def _depth_sections(run_dir: Path) -> list[str]:
    """Depth evaluations: the metric table and the best/median/worst pictures (image | truth | prediction)."""
    out = []
    for folder in sorted(p for p in run_dir.glob("eval-*") if p.is_dir()):
        summary = _load(folder / "summary.json")
        if not (isinstance(summary, dict) and summary.get("task") == "depth"):
            continue
        rows = "".join(
            f"<tr><td>{m}</td><td>{_fmt(v)}</td><td>{_fmt(summary['std'][m])}</td></tr>"
            for m, v in summary["mean"].items()
        )
        out.append(
            f"<h2>Depth, {html.escape(folder.name)} ({summary['images']} images; {html.escape(summary['kind'])}, "
            f"aligned: {html.escape(summary['align'])})</h2><table><tr><th>metric</th><th>mean</th><th>std</th></tr>{rows}</table>"
        )
        for case, pic in summary.get("pictures", {}).items():
            out.append(
                f"<p>{case}: {html.escape(pic['name'])} (AbsRel {_fmt(pic['abs_rel'])}); image, ground truth, prediction</p>"
                + _img(folder / pic["file"], case)
            )
    return out


def write_report(run_dir: Path | str) -> Path:
    """Write ``run_dir/report.html`` from what the run holds; returns its path."""
    run_dir = Path(run_dir)
    directory = ckpt.resolve_checkpoint(run_dir)
    record = ckpt.read_record(directory)
    base = record.base_model
    methods = ", ".join(m["name"] + (f" (r={m['r']})" if "r" in m else "") for m in record.methods) or "none"
    params = record.parameters
    adapter_bytes = (directory / ckpt.ADAPTER_FILE).stat().st_size
    share = (
        f"{params['trainable']:,} of {params['total']:,} ({100 * params['trainable'] / params['total']:.2f}%)"
        if params.get("total")
        else f"{sum(math.prod(s) for s in record.trainable.values()):,}"
    )
    origin = {
        "bundled": "bundled foundation",
        "preset": "RANDOM-INIT preset",
        "hub": "hub",
        "local": "local folder",
    }
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>medpeft report</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>medpeft run report: {html.escape(run_dir.name)}</h1>",
        "<table>",
        f"<tr><td>base model</td><td>{html.escape(base.source)} ({origin.get(base.kind, base.kind)})</td></tr>",
        f"<tr><td>method</td><td>{html.escape(methods)}</td></tr>",
        f"<tr><td>trainable parameters</td><td>{share}</td></tr>",
        f"<tr><td>adapter file</td><td>{adapter_bytes / 1024:.1f} KiB ({html.escape(str(directory.relative_to(run_dir)))})</td></tr>",
        f"<tr><td>labels</td><td>{html.escape(', '.join(record.label_names))}</td></tr>",
        f"<tr><td>input size</td><td>{record.image_size} x {record.image_size}</td></tr>",
        "</table>",
    ]
    if base.random_init:
        parts.append(
            "<p class='note'>The base model is a random-init preset: these numbers are not a pretrained model's.</p>"
        )
    after, before = evaluations(run_dir, "eval-"), evaluations(run_dir, "zero-shot-")
    for mode, (_folder, summary) in after.items():
        parts.append(f"<h2>Fine-tuned, {html.escape(mode)} prompts ({summary['images']} images)</h2>")
        parts.append(_class_table(summary, before.get(mode, (None, None))[1]))
    for mode, (_, summary) in before.items():
        if mode not in after:
            parts.append(f"<h2>Zero-shot, {html.escape(mode)} prompts ({summary['images']} images)</h2>")
            parts.append(_class_table(summary, None))
    parts += _depth_sections(run_dir)
    if (run_dir / "curves.png").is_file():
        parts.append("<h2>Training curves</h2>" + _img(run_dir / "curves.png", "training curves"))
    for mode, (folder, _) in after.items():
        grid = _overlay_grid(folder)
        if grid:
            parts.append(
                f"<h2>Best, median and worst cases per class ({html.escape(mode)} prompts)</h2>"
                "<p>prediction filled, ground truth outlined</p>" + grid
            )
    parts.append("<p><small>Research software, not a medical device.</small></p></body></html>")
    path = run_dir / REPORT_FILE
    ckpt.atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(parts)))
    return path
