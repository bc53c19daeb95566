"""Data-parallel training for real: 2 CPU processes on gloo over loopback (``train --processes 2``, torch's
launcher) follow the 1-process run at the same global batch, write one log and one set of checkpoints,
resume from a checkpoint with 2 processes and with 1, and keep GaLore's projectors identical across
processes; with the model sharded (FSDP) too."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_shapes_dataset, tiny_config_dict
from medpeft.config import parse_config
from medpeft.engine.trainer import train

pytestmark = pytest.mark.slow
TOL = 1e-5  # measured: the 2-process losses equal the 1-process ones to ~1e-7


def _losses(run: Path) -> dict[int, float]:
    rows = list(csv.DictReader((run / "log.csv").open()))
    steps = [int(r["step"]) for r in rows if r.get("loss")]
    assert len(steps) == len(set(steps)), "a step was logged twice (two processes writing)"
    return {int(r["step"]): float(r["loss"]) for r in rows if r.get("loss")}


def _train2(config: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "medpeft", "train", str(config), "--processes", "2", *extra]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.parametrize("optimizer", ["adamw", "galore", "fsdp"])
def test_two_processes_follow_one_and_resume(tmp_path: Path, optimizer: str) -> None:
    """``fsdp``: AdamW with the model sharded (FSDP2, one unit per encoder block) and the blocks
    checkpointed; its checkpoints are in the 1-process format, and its resume loads a sharded optimizer."""
    data = make_shapes_dataset(tmp_path / "shapes", n=20)  # 16 training images: 4 global batches of 4
    raws = {}
    for name in ("one", "two"):
        raw = tiny_config_dict(data, tmp_path / name, epochs=2, batch_size=4)
        raw["data"]["split"] = [0.8, 0.2, 0.0]
        raw["data"]["augment"] = {"hflip_p": 0.0}
        if optimizer == "galore":  # full fine-tuning with GaLore projections, refreshed every 3 steps
            raw["adapters"] = [{"name": "full"}]
            raw["optimizer"] = {"name": "galore_adamw", "rank": 4, "update_gap": 3, "projector": "srft"}
        if optimizer == "fsdp" and name == "two":
            raw["train"].update(distributed="fsdp", gradient_checkpointing=True)
        raws[name] = raw
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(raws["two"]))
    train(parse_config(raws["one"]), progress=False)
    result = _train2(tmp_path / "two.yaml")
    assert result.stdout.count("done: 8 steps") == 1  # one summary line, from rank 0
    assert ("FSDP: 2 encoder blocks" in result.stdout) == (optimizer == "fsdp")
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 9))
    assert max(abs(one[k] - two[k]) for k in one) < TOL, (one, two)
    checkpoints = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
    assert checkpoints == ["step-000004", "step-000008"]
    from medpeft.engine.restore import load_trained

    a, _, _ = load_trained(tmp_path / "one")
    b, _, _ = load_trained(tmp_path / "two")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5, msg=name)
    if optimizer != "galore":  # resume with 2 processes from the epoch-1 checkpoint: steps 5-8 again
        _train2(tmp_path / "two.yaml", "--resume-from", str(tmp_path / "two" / "checkpoints" / "step-000004"))
        again = _losses(tmp_path / "two")
        assert max(abs(one[k] - again[k]) for k in one) < TOL, (one, again)
    # the checkpoints are in the 1-process format: one process resumes the 2-process run alike
    train(
        parse_config(raws["two"]),
        progress=False,
        resume_from=tmp_path / "two" / "checkpoints" / "step-000004",
    )
    alone = _losses(tmp_path / "two")
    assert max(abs(one[k] - alone[k]) for k in one) < TOL, (one, alone)


def test_an_uneven_global_batch_is_one_line(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", n=8)
    raw = tiny_config_dict(data, tmp_path / "run", epochs=1, batch_size=3)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "medpeft", "train", str(tmp_path / "c.yaml"), "--processes", "2"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode != 0 and "train.batch_size 3 is the global batch" in result.stderr
    assert "torch.distributed" not in result.stderr  # said before any process starts


def test_a_bad_config_is_one_line_before_any_process_starts(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", n=4)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_config_dict(data, tmp_path / "run")))
    command = [sys.executable, "-m", "medpeft", "train", str(tmp_path / "c.yaml"), "--processes", "2"]
    result = subprocess.run([*command, "--set", "train.lr=-1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("error:") == 1 and "train.lr" in result.stderr
    assert "Traceback" not in result.stderr and "torch.distributed" not in result.stderr


def test_an_error_in_the_processes_is_one_line(tmp_path: Path) -> None:
    """Data is read by each training process: both meet the error, rank 0 says it, the launcher is quiet."""
    (tmp_path / "empty").mkdir()
    raw = tiny_config_dict(tmp_path / "empty", tmp_path / "run")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "medpeft", "train", str(tmp_path / "c.yaml"), "--processes", "2"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 2 and result.stderr.count("error:") == 1, result.stderr[-2000:]
    assert "missing folder" in result.stderr and str(tmp_path / "empty") in result.stderr
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
