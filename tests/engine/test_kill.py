"""SIGKILL at random moments: the pointers always name complete checkpoints, and resuming gives the same run.

A real ``medpeft train`` process is killed (SIGKILL: no handler, no cleanup) a dozen times: during
optimizer steps, validation, checkpoint writes (a ``checkpoints/.tmp-*`` folder present) and pointer
switches. After every kill ``last.json`` and ``best.json`` (when present) must name checkpoints that
verify and load; after the final ``--resume`` the log and the loss curve must equal an uninterrupted
run's, with no temporary leftovers.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import make_shapes_dataset, tiny_config_dict
from medpeft.config import parse_config
from medpeft.engine import checkpoint as ckpt
from medpeft.engine.restore import load_trained
from medpeft.engine.trainer import train

EPOCHS = 8  # 14 training images / batch 2 = 7 steps an epoch: 56 steps, ~0.1 s each with a checkpoint
KILLS = 12
MAX_STARTS = 40
WALL_LIMIT_S = 300  # the kill loop: ~150 s on an idle 2-core machine, ~280 s with the other core busy
POLL_S = 0.001  # while waiting for a short window (a checkpoint or pointer being written)
SLOW_POLL_S = 0.02  # while waiting for start-up (seconds of imports)
MODES = ("step", "step", "checkpoint", "commit")  # drawn for every start after the scripted ones
SCRIPTED = ("commit", "best")  # the first checkpoint's pointer switch; the first best.json switch


def _log_rows(run: Path) -> list[dict[str, str]]:
    try:
        with (run / "log.csv").open(newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def _last_logged_step(run: Path) -> int:
    steps = [int(r["step"]) for r in _log_rows(run) if (r.get("step") or "").isdigit()]
    return steps[-1] if steps else -1


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        s = path.stat()
    except FileNotFoundError:
        return None
    return (s.st_ino, s.st_mtime_ns, s.st_size)


def _pointer_step(run: Path, name: str) -> int:
    try:
        target = ckpt.resolve_pointer(run, name)
    except ckpt.CheckpointError:  # caught mid-write by a poll; the invariant check reads it again
        return -1
    return ckpt.step_of(target) if target is not None else 0


def _tmp_leftovers(run: Path) -> list[Path]:
    return sorted(p for p in run.rglob(".tmp-*"))


def _wait(proc: subprocess.Popen, ready, timeout: float, poll: float = POLL_S) -> bool:
    """Poll ``ready()`` until it holds (True), the process exits (False) or ``timeout`` passes (True)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(poll)
    return proc.poll() is None


def _newest_step(run: Path) -> int:
    return max((ckpt.step_of(p) for p in ckpt.step_checkpoints(run)), default=0)


def _wait_for_moment(
    proc: subprocess.Popen, run: Path, mode: str, resumed_at: int, log_before: tuple | None
) -> bool:
    """Wait until this start trains, then for the moment ``mode`` aims at; False if the process ended."""
    # training proper has begun once this process logs a step past the checkpoint it resumes from (rows
    # a killed process logged after its last checkpoint are truncated first, so they do not count)
    alive = _wait(
        proc,
        lambda: _stat(run / "log.csv") not in (None, log_before) and _last_logged_step(run) > resumed_at,
        timeout=60,
        poll=SLOW_POLL_S,
    )
    if alive and mode == "checkpoint":  # inside write_checkpoint: a .tmp-step-* folder is being filled
        alive = _wait(proc, lambda: any((run / "checkpoints").glob(".tmp-step-*")), timeout=3)
    elif alive and mode == "commit":  # a checkpoint renamed into place, last.json not yet switched to it
        alive = _wait(proc, lambda: _newest_step(run) > _pointer_step(run, "last"), timeout=3)
    elif alive and mode == "best":  # best.json being replaced (only the first validation improves here)
        alive = _wait(proc, lambda: any(run.glob(".tmp-best.json-*")), timeout=3)
    return alive


def _where(run: Path, before_last: int) -> str:
    """Classify the moment the kill landed in, from what it left behind."""
    tmp = _tmp_leftovers(run)
    last = _pointer_step(run, "last")
    newest = _newest_step(run)
    if any(p.parent.name == "checkpoints" and p.is_dir() for p in tmp):
        return "checkpoint .tmp folder being written"
    if tmp:
        return "pointer or log being replaced (.tmp file)"
    if newest > last:
        return "checkpoint renamed, pointer not yet switched"
    if last <= 0:
        return "before the first checkpoint"
    if last > before_last:
        return "between checkpoints (step, validation or cleanup)"
    return "a step after start-up, before this start's first checkpoint"


def _check_pointers(run: Path) -> dict[str, int]:
    """Both pointers, when present, name checkpoints that verify and load onto a model."""
    steps = {}
    for name in ckpt.POINTERS:
        target = ckpt.resolve_pointer(run, name)  # raises on a torn or dangling pointer
        if target is None:
            continue
        record = ckpt.verify_checkpoint(target)
        assert record.step == ckpt.step_of(target), f"{name}.json -> {target}: record of step {record.step}"
        model, loaded, _ = load_trained(target)
        assert loaded.step == record.step and any(p.requires_grad for p in model.parameters())
        steps[name] = record.step
    return steps


@pytest.mark.slow
def test_sigkill_at_random_moments_keeps_pointers_valid_and_resume_exact(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", n=24, size=64)
    settings = dict(epochs=EPOCHS, checkpoint_every=1, log_every=1, batch_size=2)

    reference = train(
        parse_config(tiny_config_dict(data, tmp_path / "reference", **settings)), progress=False
    )
    ref_rows = _log_rows(tmp_path / "reference")
    assert reference.steps == len([r for r in ref_rows if r["loss"]]) >= 40

    run = tmp_path / "killed"
    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(data, run, **settings)))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(n: int, resume: bool) -> subprocess.Popen:
        args = [sys.executable, "-m", "medpeft.cli", "train", str(config)] + (["--resume"] if resume else [])
        with (logs / f"{n:02d}.out").open("w") as out, (logs / f"{n:02d}.err").open("w") as err:
            return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)

    def failure(n: int) -> str:
        return f"start {n}: {(logs / f'{n:02d}.err').read_text()[-3000:]}"

    rng = random.Random(0)
    t0 = time.monotonic()
    landed: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    n = 0
    while sum(landed.values()) < KILLS:
        n += 1
        elapsed = time.monotonic() - t0
        assert n <= MAX_STARTS and elapsed < WALL_LIMIT_S, (
            f"only {sum(landed.values())} kills after {n - 1} starts and {elapsed:.0f} s: {dict(landed)}"
        )
        before_last = max(_pointer_step(run, "last"), 0) if run.exists() else 0
        log_before = _stat(run / "log.csv")
        mode = SCRIPTED[n - 1] if n <= len(SCRIPTED) else rng.choice(MODES)
        delay = {"step": rng.uniform(0.0, 0.3), "checkpoint": rng.uniform(0.0, 0.003)}.get(mode, 0.0)
        proc = start(n, resume=n > 1)
        try:
            alive = _wait_for_moment(proc, run, mode, before_last, log_before)
            if alive:
                time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                modes[mode] += 1
                landed[_where(run, before_last)] += 1
                _check_pointers(run)
                continue
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        # the process ended before it was killed: it must have finished the run
        assert proc.returncode == 0, failure(n)
        break
    kills = sum(landed.values())
    assert kills >= 10, f"the run finished after only {kills} kills: {dict(landed)}"

    n += 1
    proc = start(n, resume=True)
    try:
        assert proc.wait(timeout=180) == 0, failure(n)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    seconds = time.monotonic() - t0
    print(f"\n{kills} kills in {n} starts, {seconds:.0f} s; modes {dict(modes)}; landed {dict(landed)}")

    assert _tmp_leftovers(run) == []
    steps = _check_pointers(run)
    assert steps["last"] == reference.steps
    assert steps.get("best") == ckpt.step_of(reference.best_checkpoint), (
        f"best.json names step {steps.get('best')}, the uninterrupted run's names {reference.best_checkpoint}"
    )

    rows = _log_rows(run)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]  # no repeated or missing rows
    for column in ("loss", "val_dice"):
        ref = [float(r[column]) for r in ref_rows if r[column]]
        got = [float(r[column]) for r in rows if r[column]]
        assert got == pytest.approx(ref, rel=1e-6, abs=1e-7), column

    history = ckpt.load_training_state(ckpt.resolve_pointer(run, "last"))["history"]
    a = [(h["step"], h["loss"]) for h in reference.history if "loss" in h]
    b = [(h["step"], h["loss"]) for h in history if "loss" in h]
    assert [s for s, _ in a] == [s for s, _ in b]
    assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-6, abs=1e-7)
