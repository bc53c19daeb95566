"""What happens when things go wrong: one test per case of the reliability issue (numbers in the names).

Each asserts the exit code, that the message names the file or key, and that the user's files (data,
earlier checkpoints) are byte-identical afterwards. Prompt files and batch prediction (cases 7 and 12)
are in test_predict_reliability.py; random SIGKILLs (case 14's proof) in test_kill.py.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import make_shapes_dataset, tiny_config_dict, train_killed_at_loss_call
from medpeft.backbones.identity import BaseIdentity
from medpeft.cli import app
from medpeft.config import parse_config
from medpeft.engine import checkpoint as ckpt
from medpeft.engine.record import AdapterRecord
from medpeft.engine.trainer import NonFiniteLoss, train
from medpeft.tasks.segmentation_loss import SegmentationLoss

runner = CliRunner()


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (to prove nothing was changed)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write_config(path: Path, data: Path, out: Path, **train_keys) -> Path:
    path.write_text(yaml.safe_dump(json.loads(json.dumps(tiny_config_dict(data, out, **train_keys)))))
    return path


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """One tiny finished run (3 epochs, a checkpoint every step) and its dataset."""
    root = tmp_path_factory.mktemp("reliability")
    data = make_shapes_dataset(root / "shapes", n=10)
    config = write_config(
        root / "config.yaml", data, root / "run", epochs=3, checkpoint_every=1, batch_size=3
    )
    result = cli("train", config)
    assert result.exit_code == 0, result.output
    return root / "run", data


@pytest.fixture
def run_copy(trained, tmp_path: Path) -> Path:
    run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


# ----------------------------------------------------------------------------- 1. NaN stop


def test_01_nan_stop_writes_no_nan_checkpoint_and_no_fake_best(shapes_dataset: Path, tmp_path: Path) -> None:
    """lr=1e5 with no warm-up: the step that breaks the weights is never saved, best.json never appears."""
    config = write_config(
        tmp_path / "c.yaml", shapes_dataset, tmp_path / "run", lr=1e5, warmup_steps=0, checkpoint_every=1
    )
    result = cli("train", config)
    assert result.exit_code == 2
    line = error_line(result)
    assert "non-finite" in line or "nan" in line.lower()
    run = tmp_path / "run"
    last = ckpt.resolve_pointer(run, "last")
    assert (str(last) in line) if last is not None else ("no checkpoint was saved" in line)
    assert "None" not in line
    for directory in ckpt.step_checkpoints(run):
        ckpt.verify_checkpoint(directory)
        tensors = load_file(str(directory / ckpt.ADAPTER_FILE))
        assert all(torch.isfinite(t).all() for t in tensors.values()), directory
    assert not (run / "best.json").exists()  # validation never ran, so nothing may claim to be best


def test_01_non_finite_gradients_stop_before_the_step(
    shapes_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    """A finite loss whose gradient is infinite stops training before the optimizer step is taken."""

    class InfGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g * float("inf")

    calls = {"n": 0}
    original = SegmentationLoss.forward

    def poisoned(self, logits, target, valid=None):
        calls["n"] += 1
        total, terms = original(self, logits, target, valid)
        return (InfGrad.apply(total), terms) if calls["n"] == 4 else (total, terms)

    monkeypatch.setattr(SegmentationLoss, "forward", poisoned)
    cfg = parse_config(tiny_config_dict(shapes_dataset, tmp_path / "run", epochs=3, checkpoint_every=1))
    with pytest.raises(NonFiniteLoss, match=r"gradients became non-finite in optimizer step 4.*step-000003"):
        train(cfg, progress=False)
    assert ckpt.resolve_pointer(tmp_path / "run", "last").name == "step-000003"


def _record(step: int) -> AdapterRecord:
    """A minimal record for writing a checkpoint of a bare module."""
    base = BaseIdentity("bare", "preset", 2, "0" * 64, True)
    return AdapterRecord(base_model=base, label_names=[], config={}).at(step, 0)


def test_01_a_checkpoint_never_holds_a_non_finite_tensor(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    target = tmp_path / "run" / "checkpoints" / "step-000001"
    with pytest.raises(ckpt.NonFiniteCheckpoint, match="weight"):
        ckpt.write_checkpoint(target, model, _record(1))
    assert not (tmp_path / "run").exists()  # nothing at all was written
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ckpt.NonFiniteCheckpoint, match="training state"):
        ckpt.write_checkpoint(target, model, _record(1), {"m": torch.tensor([float("inf")])})


# ----------------------------------------------------------------------------- 2. --overwrite


def test_02_overwrite_never_deletes_data_or_folders_medpeft_did_not_make(
    shapes_dataset: Path, tmp_path: Path
) -> None:
    before = snapshot(shapes_dataset)
    for out in (shapes_dataset, shapes_dataset.parent):  # the data root, and a folder holding it
        config = write_config(tmp_path / "c.yaml", shapes_dataset, out, max_steps=1)
        result = cli("train", config, "--overwrite")
        assert result.exit_code == 2
        assert "contains the configured data" in error_line(result)
        assert snapshot(shapes_dataset) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    config = write_config(tmp_path / "c.yaml", shapes_dataset, mine, max_steps=1)
    result = cli("train", config, "--overwrite")
    assert result.exit_code == 2 and str(mine) in error_line(result) and "marker" in error_line(result)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_02_overwrite_replaces_an_earlier_medpeft_run(shapes_dataset: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", shapes_dataset, tmp_path / "run", max_steps=1, epochs=1)
    assert cli("train", config).exit_code == 0
    (tmp_path / "run" / "stale.txt").write_text("from the earlier run")
    result = cli("train", config)
    assert result.exit_code == 2 and "--overwrite" in error_line(result)
    result = cli("train", config, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "run" / "stale.txt").exists() and (tmp_path / "run" / "last.json").is_file()


# ----------------------------------------------------------------------------- 3. errors before the run folder


def test_03_a_data_error_leaves_no_run_folder_behind(shapes_dataset: Path, tmp_path: Path) -> None:
    orphan = shapes_dataset / "images" / "orphan.png"
    shutil.copy(shapes_dataset / "images" / "img000.png", orphan)
    config = write_config(tmp_path / "c.yaml", shapes_dataset, tmp_path / "run", max_steps=1, epochs=1)
    for flags in ((), ("--resume",)):
        result = cli("train", config, *flags)
        assert result.exit_code == 2 and "orphan" in error_line(result)
        assert not (tmp_path / "run").exists()
    orphan.unlink()
    result = cli("train", config)  # the fixed data trains without --overwrite
    assert result.exit_code == 0, result.output


def test_03_a_run_that_failed_before_its_first_checkpoint_restarts(
    shapes_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    cfg = parse_config(tiny_config_dict(shapes_dataset, tmp_path / "run", epochs=1, max_steps=2))
    train_killed_at_loss_call(cfg, 1, monkeypatch)
    assert (tmp_path / "run" / ckpt.RUN_MARKER).is_file() and not (tmp_path / "run" / "last.json").exists()
    assert train(cfg, progress=False).steps == 2  # no --overwrite needed: nothing was saved


# ----------------------------------------------------------------------------- 4. evaluate --data


def test_04_evaluate_scores_only_the_labels_the_data_annotates(trained, tmp_path: Path) -> None:
    run, data = trained
    only_disc = tmp_path / "disc_only"
    shutil.copytree(data, only_disc)
    (only_disc / "labels.json").write_text(json.dumps({"1": "disc"}))
    import numpy as np
    from PIL import Image

    for mask in (only_disc / "masks").iterdir():  # squares become background: not annotated here
        m = np.array(Image.open(mask))
        Image.fromarray(np.where(m == 1, 1, 0).astype(np.uint8)).save(mask)
    result = cli("evaluate", run, "--data", only_disc, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert "not scored: square" in result.output
    rows = list(csv.DictReader((tmp_path / "eval" / "per_image.csv").open()))
    assert {r["label"] for r in rows} == {"disc"} and len(rows) == 10  # --data defaults to every image
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert list(summary["per_class"]) == ["disc"] and summary["labels_not_scored"] == ["square"]
    assert summary["mean"]["dice"] == pytest.approx(summary["per_class"]["disc"]["dice"])

    result = cli("evaluate", run, "--data", only_disc, "--split", "test", "--out", tmp_path / "eval_test")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "eval_test" / "per_image.csv").open()))
    assert 0 < len(rows) < 10  # --split is honoured with --data


# ----------------------------------------------------------------------------- 5. corrupted adapter


def test_05_a_corrupted_adapter_is_refused(run_copy: Path) -> None:
    best = ckpt.resolve_checkpoint(run_copy)
    path = best / ckpt.ADAPTER_FILE
    raw = bytearray(path.read_bytes())
    for i in range(64):  # flip 64 bytes in the tensor data (the header still parses)
        raw[-1 - 3 * i] ^= 0xFF
    path.write_bytes(bytes(raw))
    result = cli("evaluate", run_copy, "--out", run_copy.parent / "eval")
    assert result.exit_code == 2
    line = error_line(result)
    assert str(path) in line and "corrupt" in line


def test_05_a_record_without_hashes_is_an_error(run_copy: Path) -> None:
    best = ckpt.resolve_checkpoint(run_copy)
    record_path = best / ckpt.RECORD_FILE
    record = json.loads(record_path.read_text())
    del record["base_model"]["sha256"]
    record_path.write_text(json.dumps(record))
    result = cli("evaluate", run_copy)
    assert result.exit_code == 2 and str(record_path) in error_line(result) and "sha256" in error_line(result)
    del record["files"]
    record["base_model"]["sha256"] = "0" * 64
    record_path.write_text(json.dumps(record))
    result = cli("evaluate", run_copy)
    assert result.exit_code == 2 and "missing files" in error_line(result)


# ----------------------------------------------------------------------------- 6. --resume checks the base


def test_06_resume_refuses_a_replaced_base(shapes_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    from medpeft.backbones.sam.loading import load_sam

    base = tmp_path / "base"
    torch.manual_seed(0)
    load_sam("sam-tiny", 64)[0].save_pretrained(base)
    cfg = tiny_config_dict(shapes_dataset, tmp_path / "run", epochs=2, checkpoint_every=1)
    cfg["model"]["base"] = str(base)
    train_killed_at_loss_call(parse_config(cfg), 3, monkeypatch)
    shutil.rmtree(base)
    torch.manual_seed(1)
    load_sam("sam-tiny", 64)[0].save_pretrained(base)  # same folder, other weights
    before = snapshot(tmp_path / "run")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(json.loads(json.dumps(cfg))))
    result = cli("train", config, "--resume")
    assert result.exit_code == 2
    assert "weights hash" in error_line(result) and str(base) in error_line(result)
    assert snapshot(tmp_path / "run") == before


# ----------------------------------------------------------------------------- 8. impossible values


@pytest.mark.parametrize("value", ["0", "-3"])
def test_08_impossible_max_steps_is_a_config_error(shapes_dataset: Path, tmp_path: Path, value: str) -> None:
    config = write_config(tmp_path / "c.yaml", shapes_dataset, tmp_path / "run")
    result = cli("train", config, "--set", f"train.max_steps={value}")
    assert result.exit_code == 2 and "train.max_steps" in error_line(result)
    assert not (tmp_path / "run").exists()


def test_08_no_validation_split_is_said_plainly(shapes_dataset: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", shapes_dataset, tmp_path / "run", max_steps=2, epochs=1)
    result = cli("train", config, "--set", "data.split=[0.8, 0.0, 0.2]")
    assert result.exit_code == 0, result.output
    assert "no validation split" in result.output and "Dice -1" not in result.output
    assert not (tmp_path / "run" / "best.json").exists()
    assert ckpt.resolve_checkpoint(tmp_path / "run") == ckpt.resolve_pointer(tmp_path / "run", "last")


# ----------------------------------------------------------------------------- 9 and 11. option values


@pytest.mark.parametrize(
    ("option", "value", "valid"),
    [
        ("--empty-score", "zero", "one, nan"),
        ("--split", "bogus", "train, val, test, all"),
        ("--prompt", "boxes", "box, point, box+point, auto"),
    ],
)
def test_09_unknown_option_values_list_the_valid_ones(
    run_copy: Path, option: str, value: str, valid: str
) -> None:
    result = cli("evaluate", run_copy, option, value)
    assert result.exit_code == 2
    line = error_line(result)
    assert option in line and repr(value) in line and valid in line


# ----------------------------------------------------------------------------- 10. truncated files


@pytest.mark.parametrize("command", ["evaluate", "predict", "merge"])
def test_10_a_truncated_adapter_is_named(run_copy: Path, trained, command: str) -> None:
    best = ckpt.resolve_checkpoint(run_copy)
    path = best / ckpt.ADAPTER_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    args = {
        "evaluate": ("evaluate", run_copy),
        "predict": ("predict", run_copy, trained[1] / "images", "--out", run_copy.parent / "pred"),
        "merge": ("merge", run_copy, run_copy.parent / "merged"),
    }[command]
    result = cli(*args)
    assert result.exit_code == 2
    line = error_line(result)
    assert str(path) in line and "incomplete or corrupt" in line
    assert not (run_copy.parent / "pred").exists() and not (run_copy.parent / "merged").exists()


def test_10_a_truncated_training_state_offers_the_previous_checkpoint(run_copy: Path, trained) -> None:
    _, data = trained
    config = write_config(
        run_copy.parent / "c.yaml", data, run_copy, epochs=4, checkpoint_every=1, batch_size=3
    )
    last = ckpt.resolve_pointer(run_copy, "last")
    state = last / ckpt.STATE_FILE
    state.write_bytes(state.read_bytes()[:100])
    before = snapshot(run_copy)
    result = cli("train", config, "--resume")
    assert result.exit_code == 2
    line = error_line(result)
    previous = ckpt.previous_complete(run_copy, before=last)
    assert previous is not None and str(state) in line and f"--resume-from {previous}" in line
    assert snapshot(run_copy) == before
    result = cli("train", config, "--resume-from", previous)
    assert result.exit_code == 0, result.output
    assert f"dropped {last}" in result.output
    ckpt.verify_checkpoint(ckpt.resolve_pointer(run_copy, "last"))


# ----------------------------------------------------------------------------- 11. one line, never a traceback


def test_11_malformed_inputs_are_one_line(run_copy: Path, trained, tmp_path: Path) -> None:
    _, data = trained
    config = write_config(tmp_path / "c.yaml", data, tmp_path / "new", max_steps=1)
    result = cli("train", config, "--set", "train.lr=[1")
    assert result.exit_code == 2 and "train.lr" in error_line(result) and "YAML" in error_line(result)

    result = cli("train", config, "--set", f"model.base={tmp_path / 'missing.pth'}")
    assert (
        result.exit_code == 2
        and "missing.pth" in error_line(result)
        and "does not exist" in error_line(result)
    )
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    result = cli("train", config, "--set", f"model.base={tmp_path / 'broken.pth'}")
    assert result.exit_code == 2 and "broken.pth" in error_line(result)
    assert not (tmp_path / "new").exists()

    best = ckpt.resolve_checkpoint(run_copy)
    (best / ckpt.RECORD_FILE).write_text("{}")
    result = cli("evaluate", best)
    assert result.exit_code == 2
    assert str(best / ckpt.RECORD_FILE) in error_line(result) and "base_model" in error_line(result)

    (run_copy / "best.json").unlink()
    (run_copy / "last.json").write_text("garbage")
    result = cli("evaluate", run_copy)
    assert result.exit_code == 2 and str(run_copy / "last.json") in error_line(result)


# ----------------------------------------------------------------------------- 13. resume keeps the true history


def test_13_resume_truncates_the_log_and_removes_temporaries(
    shapes_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    cfg = parse_config(tiny_config_dict(shapes_dataset, tmp_path / "run", epochs=3, checkpoint_every=2))
    train_killed_at_loss_call(cfg, 8, monkeypatch)  # step 7 logged, last checkpoint at step 6
    run = tmp_path / "run"
    logged = [int(r["step"]) for r in csv.DictReader((run / "log.csv").open()) if r["loss"]]
    assert max(logged) == 7 and ckpt.resolve_pointer(run, "last").name == "step-000006"
    (run / ".tmp-last.json-abc").write_text("half")
    (run / "checkpoints" / ".tmp-step-000008-xyz").mkdir()
    train(cfg, resume=True, progress=False)
    steps = [int(r["step"]) for r in csv.DictReader((run / "log.csv").open()) if r["loss"]]
    assert steps == sorted(set(steps)) and steps == list(range(1, steps[-1] + 1))
    assert not list(run.rglob(".tmp-*"))


# ----------------------------------------------------------------------------- 14. never rewrite a named checkpoint


def test_14_no_checkpoint_folder_is_written_twice(shapes_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    written: list[str] = []
    original = ckpt.write_checkpoint

    def spy(directory, *args, **kwargs):
        written.append(directory.name)
        return original(directory, *args, **kwargs)

    monkeypatch.setattr(ckpt, "write_checkpoint", spy)
    cfg = parse_config(tiny_config_dict(shapes_dataset, tmp_path / "run", epochs=3, checkpoint_every=1))
    result = train(cfg, progress=False)
    assert len(written) == result.steps == len(set(written))  # epoch ends too: one write per step


def test_14_a_named_checkpoint_is_never_rewritten_and_files_must_agree(run_copy: Path) -> None:
    last = ckpt.resolve_pointer(run_copy, "last")
    before = snapshot(last)
    with pytest.raises(ckpt.CheckpointError, match="a pointer names it"):
        ckpt.write_checkpoint(last, torch.nn.Linear(1, 1), _record(0))
    assert snapshot(last) == before
    previous = ckpt.previous_complete(run_copy, before=last)
    shutil.copy(previous / ckpt.STATE_FILE, last / ckpt.STATE_FILE)  # a state of another step
    with pytest.raises(ckpt.CheckpointError, match="incomplete or corrupt"):
        ckpt.verify_checkpoint(last)
    record = json.loads((last / ckpt.RECORD_FILE).read_text())
    record["files"][ckpt.STATE_FILE] = ckpt.file_sha256(last / ckpt.STATE_FILE)  # hashes agree, steps not
    (last / ckpt.RECORD_FILE).write_text(json.dumps(record))
    with pytest.raises(ckpt.CheckpointError, match="do not belong together"):
        ckpt.verify_checkpoint(last)
