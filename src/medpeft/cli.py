"""The ``medpeft`` command line: train, evaluate, predict, report, info, merge, demo."""

from __future__ import annotations

import json
import os
import sys
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Parameter-efficient fine-tuning of SAM, SAM2 and Depth Anything on medical images.",
)

ImageGlobOpt = Annotated[
    str | None, typer.Option(help="Subject folders: image pattern under the root, e.g. '*/*/Flair*.nii.gz'")
]
LabelMapOpt = Annotated[
    str | None, typer.Option(help="Subject folders: label map pattern, e.g. '{dir}/OTMultiClass.nii.gz'")
]
LabelTableOpt = Annotated[Path | None, typer.Option(help="Subject folders: labels.json (value -> name)")]
InferenceOpt = Annotated[
    str,
    typer.Option(
        help="3D models on volumes: zoom (zoom-out-zoom-in), sliding (full-resolution window) or resize"
    ),
]
DEPTH_TASKS = ("depth", "selfsup_depth")  # tasks whose output is a depth map
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a config key, e.g. train.lr=3e-4")
]


def _fail(message: str) -> None:
    # a launched training process other than rank 0 meets the same error: rank 0 says it once
    if os.environ.get("RANK", "0") == "0":
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn a user-actionable error into one red line and exit code 2."""
    try:
        yield
    except _user_errors() as e:
        _fail(str(e).strip("'\""))


def _user_errors() -> tuple[type[BaseException], ...]:
    from medpeft.backbones.hub import BaseModelUnavailable
    from medpeft.backbones.sam.bundled import BundledWeightsError
    from medpeft.config import ConfigError
    from medpeft.data.io import DataError
    from medpeft.engine.checkpoint import CheckpointError
    from medpeft.engine.trainer import NonFiniteLoss, RunDirExists

    return (
        BundledWeightsError,
        ConfigError,
        DataError,
        CheckpointError,
        RunDirExists,
        NonFiniteLoss,
        BaseModelUnavailable,
        KeyError,
        ValueError,
    )


def _confirm_overwrite(path: Path) -> bool:
    """Ask before replacing a user's earlier run (only when someone can answer)."""
    if path.exists() and any(path.iterdir()) and sys.stdin.isatty():
        return typer.confirm(f"{path} already holds a run; replace it?", default=False)
    return False


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML config")],
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint")] = False,
    resume_from: Annotated[
        Path | None,
        typer.Option(help="Continue from this checkpoint of the run (later ones are dropped)"),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory")] = False,
    processes: Annotated[
        int, typer.Option(help="Data-parallel processes on this machine (GPUs, or CPU processes on gloo)")
    ] = 1,
) -> None:
    """Fine-tune a model as the config says."""
    from medpeft.config import load_config
    from medpeft.engine.trainer import check_global_batch
    from medpeft.engine.trainer import train as run_train

    if processes < 1:
        _fail(f"--processes {processes}: expected 1 or more")
    resume = resume or resume_from is not None
    with _one_line_errors():
        cfg = load_config(config, set_)  # checked once here, before any process starts
        check_global_batch(cfg.train.batch_size, processes)
        overwrite = overwrite or (not resume and _confirm_overwrite(Path(cfg.train.output_dir)))
        if processes > 1 and "WORLD_SIZE" not in os.environ:  # this command again, as N processes
            args = ["train", str(config), *(f"--set={s}" for s in set_ or [])]
            args += ["--resume"] * resume + ["--overwrite"] * overwrite
            args += ["--resume-from", str(resume_from)] if resume_from is not None else []
            raise typer.Exit(_launch(processes, args))
        result = run_train(cfg, resume=resume, overwrite=overwrite, resume_from=resume_from)
    best = (
        "no validation split (the last checkpoint stands for the run)"
        if result.best_score is None
        else f"best validation {result.metric} {result.best_score:.4f}"
    )
    if int(os.environ.get("RANK", "0")) == 0:  # one summary line, from the process that validated
        typer.echo(f"done: {result.steps} steps, {best}; run in {result.run_dir}")


def _launch(processes: int, args: list[str]) -> int:
    """Run ``medpeft ARGS`` under torch's launcher (what ``accelerate launch`` and torchrun do): N local
    processes, each told its rank; accelerate picks the backend (NCCL on GPUs, gloo on CPU). The
    processes ask nothing: the answers were given here."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-c", "from medpeft.cli import _torchrun; _torchrun()"]
    command += ["--nproc_per_node", str(processes), "--master_addr", "127.0.0.1", "--master_port", str(port)]
    return subprocess.call([*command, "-m", "medpeft", *args], stdin=subprocess.DEVNULL)


def _torchrun() -> None:
    """torch's launcher (``torch.distributed.run``) without its traceback and log lines when a process
    fails: the failed processes have said why (rank 0's error line); a failure rank 0 did not share is
    one line naming the rank."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(get_args_parser().parse_args(sys.argv[1:]))
    except ChildFailedError as e:
        failures = {f.local_rank: f.exitcode for f in e.failures.values()}
        if 0 not in failures:
            rank, code = min(failures.items())
            typer.secho(
                f"error: training process {rank} failed (exit code {code})", fg=typer.colors.RED, err=True
            )
        raise SystemExit(2) from None


def _choice(option: str, value: str | None, valid: tuple[str, ...]) -> None:
    if value is not None and value not in valid:
        _fail(f"{option} {value!r} is not one of: {', '.join(valid)}")


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint or run directory")],
    data: Annotated[Path | None, typer.Option(help="Dataset root (default: the training data)")] = None,
    split: Annotated[
        str | None, typer.Option(help="train, val, test or all (default: test; all with --data)")
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            help="box, point, box+point or auto (default: config); a 3D model on --volumes: text, box, point, "
            "text+box, text+point, ... or several to compare, comma-separated (default: text)"
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: <run>/eval-<split>-<prompt>)")
    ] = None,
    empty_score: Annotated[
        str | None, typer.Option(help="'one' or 'nan' for empty prediction on empty mask")
    ] = None,
    volumes: Annotated[
        Path | None,
        typer.Option(
            help="A volume dataset (MSD dataset.json, or images/ + labels/): score a 2D model in 3D"
        ),
    ] = None,
    axis: Annotated[
        int, typer.Option(help="Slice axis of volumes (RAS: 0 sagittal, 1 coronal, 2 axial)")
    ] = 2,
    window: Annotated[
        str | None,
        typer.Option(
            help="CT window preset for volumes (abdomen, lung, bone, brain); default: percentiles (3D models: their data.window)"
        ),
    ] = None,
    rotate: Annotated[
        bool, typer.Option(help="Also score every volume rotated (with its labels) and report the Dice drop")
    ] = False,
    angles: Annotated[
        str | None,
        typer.Option(help="Rotation in degrees about x,y,z (RAS) for --rotate (default: 5.73,5.73,45)"),
    ] = None,
    image_glob: ImageGlobOpt = None,
    label_map: LabelMapOpt = None,
    label_table: LabelTableOpt = None,
    inference: InferenceOpt = "zoom",
    clicks: Annotated[
        int,
        typer.Option(
            help="Also simulate N interactive clicks (from --prompt point or box): Dice after each click"
        ),
    ] = 0,
    mask_input: Annotated[
        bool, typer.Option(help="--clicks: feed the previous logits back as SAM's mask prompt")
    ] = True,
) -> None:
    """Score a checkpoint: per-image CSV, summary JSON, table and overlays (or per-case 3D scores with
    ``--volumes``)."""
    from dataclasses import replace

    from medpeft.config import EvalConfig
    from medpeft.data.splits import SPLITS
    from medpeft.engine.restore import load_trained
    from medpeft.engine.volume3d import INFERENCE
    from medpeft.models.prompts import PROMPT_MODES, VOLUME_PROMPT_MODES
    from medpeft.tasks.segmentation import build_dataset, build_splits
    from medpeft.tasks.segmentation_eval import evaluate as run_eval
    from medpeft.tasks.segmentation_eval import format_table

    _choice("--split", split, (*SPLITS, "all"))
    _choice("--inference", inference, INFERENCE)
    modes = None if prompt is None else [m.strip() for m in prompt.split(",")]
    for mode in modes or []:
        _choice("--prompt", mode, PROMPT_MODES + (VOLUME_PROMPT_MODES if volumes is not None else ()))
    if clicks < 0 or (clicks and volumes is not None):
        _fail(f"--clicks {clicks}: a number of clicks (>= 1) for a 2D segmentation model, without --volumes")
    if modes is not None and len(modes) > 1 and volumes is None:
        _fail(f"--prompt {prompt}: several prompt modes are compared on --volumes (a 3D model) only")
    _choice("--empty-score", empty_score, typing.get_args(EvalConfig.model_fields["empty_score"].annotation))
    volume_split = None if split in (None, "all") else split  # a volume dataset's <split>.list
    split = split or ("all" if data else "test")
    with _one_line_errors():
        model, record, cfg = load_trained(checkpoint)
        if volumes is not None:
            return _evaluate_volumes(
                model,
                cfg,
                checkpoint,
                volumes,
                volume_split,
                axis,
                window,
                out,
                _rotation(rotate, angles),
                {"image_glob": image_glob, "label_map": label_map, "label_table": label_table},
                inference,
                modes,
            )
        if cfg.task == "volume_segmentation":
            _fail(f"{checkpoint} is a 3D model: score it on volumes with --volumes DATASET")
        if cfg.task != "segmentation" and rotate:
            _fail("--rotate scores segmentation models")
        if cfg.task in DEPTH_TASKS:
            if clicks:
                _fail("--clicks simulates segmentation models")
            return _evaluate_depth(model, cfg, checkpoint, data, split, out)
        splits = build_splits(cfg, data)
        trained = record.label_names
        _check_labels(splits.label_names, trained)
        records = splits.train + splits.val + splits.test if split == "all" else getattr(splits, split)
        if not records:
            _fail(f"the {split!r} split of {data or 'the training data'} is empty")
        skipped = [n for n in trained if n not in splits.label_names]
        if skipped:  # score only what this dataset annotates, as training does
            records = [replace(r, annotated=r.annotated or tuple(splits.label_names)) for r in records]
            typer.echo(f"labels not annotated in {data or 'the data'}, not scored: {', '.join(skipped)}")
        mode = prompt or cfg.prompts.eval_mode
        out = out or Path(cfg.train.output_dir) / f"eval-{split}-{mode.replace('+', '_')}"
        score = cfg.eval.empty_score if empty_score is None else empty_score
        summary = run_eval(
            model,
            build_dataset(cfg, records, trained, train=False),
            mode,
            out,
            empty_score=1.0 if score == "one" else float("nan"),
            threshold=cfg.eval.threshold,
            spacing=cfg.data.spacing,
            surface=cfg.eval.surface_metrics,
            not_scored=skipped,
        )
    typer.echo(format_table(summary))
    typer.echo(f"wrote {out}/per_image.csv, summary.json and overlays/")
    if rotate:
        _rotation_2d(model, cfg, records, trained, mode, out, angles)
    if clicks:
        from medpeft.tasks.segmentation_clicks import START_MODES, simulate_clicks, write_clicks

        if cfg.model.depth_guided is not None:
            _fail("--clicks: a depth-guided model is not simulated (its depth maps are not passed)")
        start = mode if mode in START_MODES else "point"
        dataset = build_dataset(cfg, records, trained, train=False)
        result = simulate_clicks(model, dataset, clicks, start, cfg.train.batch_size, mask_input)
        typer.echo(write_clicks(result, out / "clicks"))
        typer.echo(f"wrote {out}/clicks/clicks.json and clicks.png")
    run_dir = _run_dir_of(checkpoint)
    if run_dir is not None and run_dir.resolve() in out.resolve().parents:
        from medpeft.engine.html_report import write_report

        typer.echo(f"report: {write_report(run_dir)}")


def _evaluate_volumes(
    model,
    cfg,
    checkpoint: Path,
    root: Path,
    split: str | None,
    axis: int,
    window: str | None,
    out: Path | None,
    rotation: tuple[float, float, float] | None = None,
    layout: dict | None = None,
    inference: str = "zoom",
    modes: list[str] | None = None,
) -> None:
    """``medpeft evaluate --volumes``: a 2D segmenter slice by slice, or a 3D model by ``inference`` under
    each prompt mode, on every case, scored in 3D (mm)."""
    from medpeft.data.volume_io import read_volume_dataset
    from medpeft.engine.volumes import evaluate_volumes, format_volume_table

    if cfg.task not in ("segmentation", "volume_segmentation"):
        _fail(f"--volumes scores segmentation models; {checkpoint} is a {cfg.task} checkpoint")
    if cfg.task == "segmentation" and modes is not None:
        _fail(f"--prompt {','.join(modes)}: a 2D model is scored on volumes in automatic mode")
    window = _volume_window(cfg, window)
    cases, table = read_volume_dataset(root, split, **(layout or {}))
    out = out or Path(cfg.train.output_dir) / f"eval-volumes-{root.name}"
    summary = evaluate_volumes(
        model,
        cases,
        table,
        out,
        axis,
        window,
        cfg.data.resize,
        cfg.data.normalize,
        cfg.eval.threshold,
        rotation=rotation,
        inference=inference,
        prompt_modes=modes,
    )
    typer.echo(format_volume_table(summary))
    typer.echo(f"wrote {out}/per_case.csv, summary.json and pictures/")


def _evaluate_depth(model, cfg, checkpoint: Path, data: Path | None, split: str, out: Path | None) -> None:
    """``medpeft evaluate`` of a depth checkpoint: depth metrics per image, summary and pictures."""
    from medpeft.tasks.base import make_task
    from medpeft.tasks.depth import evaluate_depth, format_depth_table

    task = make_task(cfg)
    splits = task.splits(data)
    records = splits.train + splits.val + splits.test if split == "all" else getattr(splits, split)
    if not records:
        _fail(f"the {split!r} split of {data or 'the training data'} is empty")
    out = out or Path(cfg.train.output_dir) / f"eval-{split}-depth"
    summary = evaluate_depth(task, model, task.dataset(records, [], train=False), out)
    typer.echo(format_depth_table(summary))
    typer.echo(f"wrote {out}/per_image.csv, summary.json and pictures/")


def _rotation_2d(model, cfg, records, labels: list[str], mode: str, out: Path, angles: str | None) -> None:
    """``evaluate --rotate`` of a 2D model: every image and its masks rotated in-plane (default 45
    degrees); per-class Dice original vs rotated at the model's resolution, ``rotation.json`` and a chart."""
    import json

    from medpeft.engine.volumes import rotation_chart, rotation_table
    from medpeft.tasks.segmentation import build_dataset
    from medpeft.tasks.segmentation_eval import dice_by_class

    try:
        angle = float(angles) if angles is not None else 45.0
    except ValueError:
        _fail(f"--angles {angles!r}: a 2D model rotates in-plane by one angle in degrees, e.g. 45")
    before = dice_by_class(
        model, build_dataset(cfg, records, labels, train=False), mode, cfg.train.batch_size
    )
    turned = build_dataset(cfg, records, labels, train=False)
    turned.rotate_deg = angle
    after = dice_by_class(model, turned, mode, cfg.train.batch_size)
    table = {"angle_deg": angle, **rotation_table(before, after)}
    (out / "rotation.json").write_text(json.dumps(table, indent=2))
    rotation_chart(out / "rotation.png", table, f"rotated {angle:g} degrees in-plane")
    typer.echo(f"rotated {angle:g} degrees in-plane: Dice original -> rotated (drop)")
    for name, r in [*table["per_class"].items(), ("mean", table["mean"])]:
        typer.echo(f"  {name}: {r['dice']:.3f} -> {r['dice_rotated']:.3f} ({r['drop']:+.3f})")
    typer.echo(f"wrote {out}/rotation.json and rotation.png")


def _rotation(rotate: bool, angles: str | None) -> tuple[float, float, float] | None:
    """``--rotate`` / ``--angles`` (degrees about x, y, z) as radians; None without ``--rotate``."""
    import math

    from medpeft.engine.volumes import DEFAULT_ROTATION

    if angles is not None and not rotate:
        _fail("--angles needs --rotate")
    if not rotate:
        return None
    if angles is None:
        return DEFAULT_ROTATION
    try:
        values = [math.radians(float(v)) for v in angles.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        _fail(f"--angles {angles!r}: expected three numbers in degrees about x,y,z, e.g. 0,0,45")
    return (values[0], values[1], values[2])


def _volume_window(cfg, window):
    """``--window``, or for a 3D model the intensity map it was trained with (``data.window``)."""
    return cfg.data.window if window is None and cfg.task == "volume_segmentation" else window


def _volume_predictor(model, cfg, volumes: list[Path], out: Path, axis: int, window, prompts, inference: str):
    """``predict_volume_file`` for each volume of a batch (a 2D model slice by slice, a 3D model by
    ``inference``), its prompts read and checked first."""
    from medpeft.data.volume_io import read_volume_prompts
    from medpeft.engine.volumes import predict_volume_file

    boxes = read_volume_prompts(prompts, volumes, list(model.label_names)) if prompts is not None else {}
    window = _volume_window(cfg, window)

    def run(path: Path) -> dict:
        return predict_volume_file(
            model,
            path,
            out,
            axis,
            window,
            boxes.get(path),
            cfg.data.resize,
            cfg.data.normalize,
            cfg.eval.threshold,
            inference,
        )

    return run


def _run_dir_of(path: Path) -> Path | None:
    """The run folder a checkpoint (or run) path belongs to, if medpeft made it."""
    from medpeft.engine.rundir import is_medpeft_run

    return next((folder for folder in (path, path.parent.parent) if is_medpeft_run(folder)), None)


@app.command()
def report(run: Annotated[Path, typer.Argument(help="Run directory")]) -> None:
    """Write RUN/report.html: model, method, per-class tables, before/after, curves and overlays."""
    from medpeft.engine.html_report import write_report

    with _one_line_errors():
        path = write_report(run)
    typer.echo(f"wrote {path}")


def _check_labels(found: list[str], trained: list[str]) -> None:
    unknown = [n for n in found if n not in trained]
    if unknown:
        _fail(f"the data has labels {unknown} the checkpoint was not trained on; trained labels: {trained}")


@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint or run directory")],
    inputs: Annotated[Path, typer.Argument(help="Image file or folder")],
    out: Annotated[Path, typer.Option(help="Output folder")] = Path("predictions"),
    prompts: Annotated[
        Path | None, typer.Option(help="JSON with boxes/points per image; none = automatic")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an earlier medpeft prediction output in --out (nothing else)")
    ] = False,
    task: Annotated[
        str | None, typer.Option(help="segmentation or depth (default: the checkpoint's task; checked)")
    ] = None,
    depth: Annotated[
        Path | None,
        typer.Option(help="Depth maps by stem, for a model with depth source 'file' (default: ../depth)"),
    ] = None,
    axis: Annotated[int, typer.Option(help="Slice axis for volume inputs (RAS: 2 axial)")] = 2,
    window: Annotated[
        str | None,
        typer.Option(
            help="CT window preset for volume inputs; default: percentiles (3D models: their data.window)"
        ),
    ] = None,
    inference: InferenceOpt = "zoom",
    engine: Annotated[
        str,
        typer.Option(help="torch (a checkpoint or run) or onnx (a folder from medpeft export --format onnx)"),
    ] = "torch",
) -> None:
    """Segment new images (PNG label maps and overlays) or estimate depth (16-bit PNG depth and pictures).

    Exit code 0: all written; 1: some input files could not be read (the rest are written, failures listed
    in predictions.json); 2: nothing written (bad prompts, inputs, checkpoint or output folder).
    """
    from medpeft.engine.predict import check_output_dir, is_volume, list_images
    from medpeft.engine.predict import predict as run_predict
    from medpeft.engine.volume3d import INFERENCE
    from medpeft.tasks.base import TASK_NAMES, make_task

    _choice("--task", task, TASK_NAMES)
    _choice("--inference", inference, INFERENCE)
    _choice("--engine", engine, ENGINES)
    with _one_line_errors():
        check_output_dir(out, overwrite)  # cheap, before loading the model; predict() checks again
        model, cfg = _load_engine(checkpoint, engine)
        if task is not None and task != cfg.task:
            _fail(f"--task {task}: {checkpoint} is a {cfg.task} checkpoint")
        files = list_images(inputs)
        volumes = [p for p in files if is_volume(p)]
        if cfg.task == "volume_segmentation" and not volumes:
            _fail(
                f"{inputs}: a 3D model takes NIfTI volumes (.nii / .nii.gz, a file, a folder or a .txt list)"
            )
        if prompts is not None and volumes and len(volumes) != len(files):
            _fail(f"--prompts {prompts}: prompt 2D images and volumes in separate runs")
        writer = None if cfg.task == "volume_segmentation" else make_task(cfg).prediction_writer()
        if depth is not None:
            if getattr(writer, "depth_scale", None) is None:
                _fail(f"--depth {depth}: this model takes no depth maps (its depth source is not 'file')")
            writer.depth_dir = depth
        volume_fn = None
        if volumes and cfg.task in ("segmentation", "volume_segmentation"):
            volume_fn = _volume_predictor(model, cfg, volumes, out, axis, window, prompts, inference)
        report = run_predict(
            model,
            inputs,
            out,
            writer,
            None if volumes else prompts,
            overwrite=overwrite,
            volume_fn=volume_fn,
            task=cfg.task,
        )
    failed = report["failed"]
    typer.echo(
        f"{len(report['images'])} image(s) and {len(report['volumes'])} volume(s) written, {len(failed)} failed"
        + (":" if failed else "")
    )
    for item in failed:
        typer.echo(f"  {item['image']}: {item['error']}")
    if cfg.task in DEPTH_TASKS:
        typer.echo(f"depth in {out}/depth ({report.get('depth_png')}), pictures in {out}/pictures")
    else:
        typer.echo(
            f"masks in {out}/masks and {out}/volumes, pictures in {out}/overlays and {out}/pictures; "
            f"summary {out}/predictions.csv (labels: {model.label_names})"
        )
    if failed:
        raise typer.Exit(1)


ENGINES = ("torch", "onnx")


def _load_engine(path: Path, engine: str):
    """(model, config) from a checkpoint (``torch``) or an ONNX export folder (``onnx``)."""
    if engine == "onnx":
        from medpeft.deploy.onnx import load_onnx

        return load_onnx(path)
    from medpeft.engine.restore import load_trained

    model, _, cfg = load_trained(path)
    return model, cfg


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint or run directory")],
    out: Annotated[Path, typer.Argument(help="Output folder")],
    format: Annotated[
        str,
        typer.Option(
            "--format", help="onnx (image encoder + prompt decoder graphs) or safetensors (as merge)"
        ),
    ] = "onnx",
    opset: Annotated[int, typer.Option(help="ONNX opset")] = 18,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in OUT (nothing else)")] = False,
) -> None:
    """Export a fine-tuned segmenter with its adapters merged: two ONNX graphs checked against PyTorch with
    onnxruntime (``predict --engine onnx`` runs them), or the merged transformers folder."""
    from medpeft.deploy.onnx import MANIFEST, export_onnx
    from medpeft.engine.merge import HEAD_RECORD

    _choice("--format", format, ("onnx", "safetensors"))
    if format == "safetensors":
        return merge(checkpoint, out, overwrite)
    ours = (out / MANIFEST).is_file() or (out / HEAD_RECORD).is_file()
    if out.exists() and any(out.iterdir()) and ours and not (overwrite or _confirm_overwrite(out)):
        _fail(f"{out} already holds an export; pass --overwrite to replace it")
    if opset < 18:
        _fail(f"--opset {opset}: the exporter writes opset 18 or newer")
    with _one_line_errors():
        manifest = export_onnx(checkpoint, out, opset)
    diffs = manifest["max_abs_difference"]
    typer.echo(
        f"wrote {out}/{manifest['encoder']} and {out}/{manifest['decoder']} (opset {opset}, "
        f"{manifest['backbone']}, labels {manifest['label_names']})"
    )
    typer.echo("max |onnxruntime - PyTorch|: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))


@app.command()
def serve(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint, run directory or ONNX export folder")],
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but 127.0.0.1 is reachable by others")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8765,
    engine: Annotated[str, typer.Option(help="auto (by folder), torch or onnx")] = "auto",
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload accepted")] = 512.0,
    window: Annotated[
        str | None,
        typer.Option(help="CT window preset for volumes; default: percentiles (3D models: data.window)"),
    ] = None,
) -> None:
    """A local page to open an image (PNG, JPEG, DICOM) or NIfTI volume, click points, drag a box or segment
    every label by name, and download the mask (PNG, or NIfTI on the input's grid)."""
    try:
        from medpeft.deploy.serve import load_server, make_app
    except ImportError as e:
        _fail(
            f"{e.name} is not installed; medpeft serve needs the deploy extra: pip install 'medpeft[deploy]'"
        )
    _choice("--engine", engine, ("auto", *ENGINES))
    if max_upload_mb <= 0:
        _fail(f"--max-upload-mb {max_upload_mb}: expected a positive size")
    with _one_line_errors():
        server = load_server(checkpoint, engine, max_upload_mb, window)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(
            f"warning: serving on {host}: anyone who can reach this machine can open images and read masks "
            "(there is no authentication); use 127.0.0.1 unless this network is trusted",
            fg=typer.colors.YELLOW,
            err=True,
        )
    import uvicorn

    typer.echo(
        f"medpeft serve: http://{host}:{port}/ ({server.engine}, labels {server.labels}); Ctrl-C stops"
    )
    uvicorn.run(make_app(server), host=host, port=port, log_level="warning")


@app.command("check-data")
def check_data(
    root: Annotated[Path, typer.Argument(help="Volume dataset (dataset.json, or images/ + labels/)")],
    image_glob: ImageGlobOpt = None,
    label_map: LabelMapOpt = None,
    label_table: LabelTableOpt = None,
) -> None:
    """Check a volume dataset: readable files, image vs label shape and affine, label values vs the table,
    empty label maps, labels never present. One line per problem; exit code 1 when there are any."""
    from medpeft.data.volume_io import check_volume_dataset

    with _one_line_errors():
        n, problems = check_volume_dataset(
            root, image_glob=image_glob, label_map=label_map, label_table=label_table
        )
    for line in problems:
        typer.echo(line)
    typer.echo(f"{n} case(s) checked: {len(problems)} problem(s)")
    if problems:
        raise typer.Exit(1)


@app.command()
def info(
    config: Annotated[Path, typer.Argument(help="YAML config")],
    set_: SetOpt = None,
) -> None:
    """Trainable parameters per group and as a share of the whole model."""
    from medpeft.config import load_config
    from medpeft.engine.build import build_model
    from medpeft.engine.report import parameter_report

    with _one_line_errors():
        cfg = load_config(config, set_)
        labels = (
            [] if cfg.task in DEPTH_TASKS else cfg.data.labels or _labels_from_data(cfg) or ["foreground"]
        )
        model, identity = build_model(cfg, labels)
    volume = getattr(model, "spatial_dims", 2) == 3
    size = "x".join(str(s) for s in (model.roi if volume else (cfg.model.image_size,) * 2))
    typer.echo(
        f"base: {identity.source} ({identity.kind}{', random init' if identity.random_init else ''}), "
        f"backbone {cfg.model.backbone}, task {cfg.task}, input {size}"
        + (f", labels: {labels}" if labels else "")
    )
    typer.echo(parameter_report(model, cfg))


def _labels_from_data(cfg) -> list[str] | None:
    from medpeft.data.readers import read_dataset

    if cfg.task == "volume_segmentation":
        from medpeft.tasks.volume_segmentation import volume_splits

        has_data = cfg.data.sources or (cfg.data.root is not None and Path(cfg.data.root).exists())
        return volume_splits(cfg).label_names if has_data else None
    if cfg.data.root is None or not Path(cfg.data.root).exists():
        return None
    return read_dataset(Path(cfg.data.root), format=cfg.data.format, labels=cfg.data.labels)[1]


@app.command()
def merge(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint or run directory")],
    out: Annotated[Path, typer.Argument(help="Folder for the merged transformers model")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder")] = False,
) -> None:
    """Fold adapters into the base weights and write a plain ``SamModel.from_pretrained`` directory."""
    from medpeft.engine.merge import HEAD_RECORD, merge_checkpoint

    is_merge = (out / HEAD_RECORD).is_file()
    if out.exists() and any(out.iterdir()) and is_merge and not (overwrite or _confirm_overwrite(out)):
        _fail(f"{out} already exists; pass --overwrite to replace it")
    with _one_line_errors():
        diff = merge_checkpoint(checkpoint, out)
    typer.echo(f"merged model written to {out} (max |logit difference| before/after merge: {diff:.2e})")


@app.command()
def demo(
    output: Annotated[Path, typer.Option(help="Run folder")] = Path("runs/demo"),
    data: Annotated[Path, typer.Option(help="Bundled demo dataset")] = Path("demo_data/totalseg_ct"),
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier demo run")] = False,
    base: Annotated[
        str | None,
        typer.Option(help="Base model (default: the bundled sam-mini-med; or a hub id, dir, .pth)"),
    ] = None,
) -> None:
    """The main job on bundled data: fine-tune, evaluate on held-out slices, write overlays."""
    from medpeft.engine.demo import run_demo

    if output.exists() and any(output.iterdir()) and not (overwrite or _confirm_overwrite(output)):
        _fail(f"{output} already holds a demo run; pass --overwrite (or make demo DEMO_FLAGS=--overwrite)")
    with _one_line_errors():
        summary = run_demo(output, data, set_ or [], overwrite=True, base=base)
    typer.echo(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app()
