"""The one training loop (accelerate), for every backbone and task: seeded, resumable, logged, validated,
checkpointed atomically. The task supplies data, loss and validation score; methods supply loss terms."""

from __future__ import annotations

import csv
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medpeft.adapters.registry import AdapterMethod
from medpeft.config import Config, dump_config
from medpeft.engine import checkpoint as ckpt
from medpeft.engine import fsdp
from medpeft.engine.build import build_model, build_optimizer, make_record
from medpeft.engine.embedding_cache import EmbeddingCache, cache_mode
from medpeft.engine.grad_checkpoint import enable_gradient_checkpointing, encoder_blocks
from medpeft.engine.html_report import write_report
from medpeft.engine.report import trainable_share
from medpeft.engine.rundir import RunDirExists, check_replaceable, create_run_dir, data_paths
from medpeft.engine.schedule import build_scheduler
from medpeft.engine.step import method_penalties, training_loss
from medpeft.tasks.base import Task, make_task

__all__ = ["NonFiniteLoss", "RunDirExists", "TrainResult", "log_fields", "train"]


class NonFiniteLoss(FloatingPointError):
    """Training produced a NaN or infinite loss, gradient or weight."""


@dataclass
class TrainResult:
    """What a finished run produced; ``best_score`` (the task's ``metric``) is None without a validation split."""

    run_dir: Path
    steps: int
    best_score: float | None
    metric: str = "dice"
    history: list[dict[str, float]] = field(default_factory=list)
    best_checkpoint: Path | None = None

    @property
    def best_dice(self) -> float | None:
        """The best validation Dice of a segmentation run."""
        return self.best_score if self.metric == "dice" else None


def log_fields(task: Task, penalties: list[AdapterMethod]) -> list[str]:
    """``log.csv`` columns: the task's loss terms, each configured method's penalty, the validation score."""
    names = [m.penalty_name for m in penalties]
    return ["step", "epoch", "lr", "loss", *task.terms, *names, f"val_{task.metric}", "seconds"]


def find_resume_checkpoint(run_dir: Path, resume: bool, resume_from: Path | None) -> Path | None:
    """The verified checkpoint to continue from (None: a fresh run); a damaged one names a fallback."""
    if resume_from is not None:
        directory = Path(resume_from)
        if directory.resolve().parent.parent != run_dir.resolve():
            raise ckpt.CheckpointError(
                f"--resume-from {directory}: not a checkpoint of the run in {run_dir} "
                f"(expected {run_dir}/checkpoints/step-N)"
            )
        directory = run_dir / "checkpoints" / directory.resolve().name  # the run's own spelling of it
    elif resume:
        directory = ckpt.resolve_pointer(run_dir, "last")
        if directory is None:
            # a kill between the first checkpoint's rename and its pointer leaves a complete checkpoint
            # and no last.json: continue from the newest verified one (None: nothing saved, start afresh)
            return ckpt.previous_complete(run_dir)
    else:
        return None
    try:
        ckpt.verify_checkpoint(directory)
    except ckpt.CheckpointError as e:
        fallback = ckpt.previous_complete(run_dir, before=directory)
        hint = (
            f"the previous complete checkpoint is {fallback}: continue from it with --resume-from {fallback}"
            if fallback is not None
            else "no earlier complete checkpoint exists: start afresh with --overwrite"
        )
        raise ckpt.CheckpointError(f"cannot resume: {e}; {hint}") from None
    return directory


def rewind_run(run_dir: Path, directory: Path, step: int) -> None:
    """Make ``directory`` the run's last checkpoint: drop later checkpoints, log rows and temporary files."""
    for later in ckpt.step_checkpoints(run_dir):
        if later != directory and ckpt.step_of(later) > step:
            for pointer in ckpt.POINTERS:
                if ckpt.resolve_pointer(run_dir, pointer) == later:
                    (run_dir / f"{pointer}.json").unlink()
            shutil.rmtree(later)
            print(f"[medpeft] dropped {later} (after the checkpoint resumed from)")
    if ckpt.resolve_pointer(run_dir, "last") != directory:
        ckpt.commit_checkpoint(run_dir, directory, ["last"])
    ckpt.remove_stale_files(run_dir)
    truncate_log(run_dir / "log.csv", step)


def truncate_log(path: Path, step: int) -> None:
    """Keep only the ``log.csv`` rows up to ``step`` (rows written after the checkpoint are redone)."""
    if not path.is_file():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows, fields = list(reader), list(reader.fieldnames or [])
    kept = [r for r in rows if r.get("step") and int(float(r["step"])) <= step]
    if len(kept) == len(rows):
        return

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(kept)

    ckpt.atomic_write(path, write)


def check_mixed_precision(mode: str, cpu: bool) -> None:
    """One line instead of a crash deep in a kernel when the device cannot compute in ``mode``."""
    if mode == "no":
        return
    if torch.cuda.is_available() and not cpu:
        if mode == "bf16" and not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name()
            raise ValueError(f"train.mixed_precision: bf16: {name} has no bfloat16 support; use fp16")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() and not cpu:
        if mode == "bf16":
            raise ValueError("train.mixed_precision: bf16 is not supported on Apple MPS; use fp16 or no")


def check_global_batch(batch_size: int, processes: int) -> None:
    """``train.batch_size`` is the global batch: every process must get the same share."""
    if batch_size % processes:
        raise ValueError(
            f"train.batch_size {batch_size} is the global batch; it must split evenly over {processes} processes"
        )


def train(
    cfg: Config,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    resume_from: Path | None = None,
) -> TrainResult:
    """Fine-tune as configured; resumes from ``run_dir/last.json`` when ``resume`` (or ``resume_from``).

    Data, config, base model and the checkpoint to resume are all checked before anything is written.
    """
    run_dir = Path(cfg.train.output_dir)
    resume_dir = find_resume_checkpoint(run_dir, resume, resume_from)
    resume_record = ckpt.read_record(resume_dir) if resume_dir is not None else None
    replace = False
    if resume_dir is None:
        replace = check_replaceable(run_dir, overwrite, data_paths(cfg))
    check_mixed_precision(cfg.train.mixed_precision, cfg.train.cpu)
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # several processes without a GPU: accelerate's multi-CPU mode (gloo) only when told "cpu"
    cpu = cfg.train.cpu or (several and not torch.cuda.is_available())
    plugin = fsdp.fsdp_plugin() if several and cfg.train.distributed == "fsdp" else None
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.train.grad_accum,
        cpu=cpu,
        fsdp_plugin=None if cpu else plugin,
        mixed_precision=cfg.train.mixed_precision,
        # train.batch_size is the global batch: N processes see the samples 1 process would
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        # a prompt mode leaves some trainable tensors unused in a step (SAM's mask encoder without a mask)
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if plugin is not None and cpu:
        fsdp.shard_on_cpu(accelerator, plugin)
    sharded = fsdp.is_sharded(accelerator)  # also when an `accelerate launch` FSDP config asked for it
    check_global_batch(cfg.train.batch_size, accelerator.num_processes)
    set_seed(cfg.train.seed)
    task = make_task(cfg)
    splits = task.splits()
    if not splits.train:
        raise ValueError(f"data.root {cfg.data.root}: the training split is empty")
    train_ds = task.dataset(splits.train, splits.label_names, train=True)
    val_ds = task.dataset(splits.val, splits.label_names, train=False) if splits.val else None
    model, identity = build_model(
        cfg,
        splits.label_names,
        expected=resume_record.base_model if resume_record else None,
        expected_depth=resume_record.depth_model if resume_record else None,
    )
    if cfg.train.gradient_checkpointing:
        blocks = enable_gradient_checkpointing(model)
        if accelerator.is_main_process:
            print(f"[medpeft] gradient checkpointing: {blocks} encoder blocks recompute their activations")
    cache, cache_line = cache_mode(cfg, model, accelerator.num_processes)
    if cache != "off":
        task.embedding_cache = EmbeddingCache(train_ds, identity.sha256, cfg, disk=cache == "disk")
    if cache_line and accelerator.is_main_process:
        print(f"[medpeft] {cache_line}")
    optimizer = build_optimizer(cfg, model)
    optimizer_names: list[list[str]] = []  # FSDP: the tensor names, for gathering the optimizer state
    if sharded:
        fsdp.check_plugin(accelerator, model)
        optimizer_names = fsdp.optimizer_names(model, optimizer)
        if accelerator.is_main_process:
            print(
                f"[medpeft] FSDP: {len(encoder_blocks(model))} encoder blocks and the rest of the model "
                f"sharded over {accelerator.num_processes} processes"
            )
    penalties = method_penalties(cfg)
    fields = log_fields(task, penalties)
    val_key = f"val_{task.metric}"

    batches_per_epoch = math.ceil(len(train_ds) / cfg.train.batch_size)
    steps_per_epoch = max(1, batches_per_epoch // cfg.train.grad_accum)
    total_steps = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps is not None:
        total_steps = min(total_steps, cfg.train.max_steps)
    warmup = (
        cfg.train.warmup_steps
        if cfg.train.warmup_steps is not None
        else int(cfg.train.warmup_frac * total_steps)
    )
    scheduler = build_scheduler(
        optimizer, total_steps, warmup, cfg.train.schedule, cfg.train.poly_power, cfg.train.min_lr_ratio
    )
    trainable_n, total_n = trainable_share(model)
    record = make_record(
        cfg,
        identity,
        splits.label_names,
        parameters={"trainable": trainable_n, "total": total_n},
        depth_identity=getattr(model, "depth_identity", None),
    )

    step, start_epoch, history = 0, 0, []
    best: float | None = None
    if resume_dir is not None:
        ckpt.load_adapter_tensors(model, resume_dir, resume_record)
        state = ckpt.load_training_state(resume_dir, resume_record)
        if not sharded:  # a sharded optimizer takes its state once prepared (below)
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, start_epoch, history, best = state["step"], state["epoch"], state["history"], state["best"]
        if accelerator.is_main_process:
            rewind_run(run_dir, resume_dir, step)
            print(f"[medpeft] resuming {run_dir} from step {step} (epoch {start_epoch})")
    elif accelerator.is_main_process:
        create_run_dir(run_dir, replace)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dump_config(cfg), sort_keys=False))
    accelerator.wait_for_everyone()  # the run folder is ready before any process goes on

    model, optimizer = accelerator.prepare(model, optimizer)
    if sharded:
        fsdp.register_forward_methods(model)
        if resume_dir is not None:
            fsdp.load_optimizer_state(model, optimizer.optimizer, state["optimizer"], optimizer_names)
    writer = (
        _tensorboard(run_dir, purge_step=step + 1 if step else None) if accelerator.is_main_process else None
    )
    log_path = run_dir / "log.csv"

    def save(pointers: list[str], epoch_done: int, score: float | None = None) -> None:
        """Every process calls it (a sharded model is gathered first); the main process writes."""
        tensors = fsdp.trained_tensors(model) if sharded else None
        optimizer_state = (
            fsdp.optimizer_state(model, optimizer.optimizer, optimizer_names) if sharded else None
        )
        if not accelerator.is_main_process:
            return
        directory = run_dir / "checkpoints" / f"step-{step:06d}"
        rec = record.at(step, epoch_done, **{val_key: score})
        ckpt.write_checkpoint(
            directory,
            accelerator.unwrap_model(model),
            rec,
            {
                "optimizer": optimizer_state if sharded else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "epoch": epoch_done,
                "history": history,
                "best": best,
            },
            tensors=tensors,
        )
        ckpt.commit_checkpoint(run_dir, directory, pointers)

    def stop(what: str) -> NonFiniteLoss:
        bar.close()
        last = ckpt.resolve_pointer(run_dir, "last")
        good = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
        return NonFiniteLoss(
            f"{what} in optimizer step {step + 1}; training stopped before saving it, {good}; "
            "lower train.lr or check the data"
        )

    trainable = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc="train",
        unit="step",
        disable=not (progress and accelerator.is_main_process),
    )
    t0 = time.perf_counter()
    epoch = start_epoch
    while step < total_steps and epoch < cfg.train.epochs:
        model.train()
        train_ds.set_epoch(epoch)
        generator = torch.Generator().manual_seed(cfg.train.seed * 7919 + epoch)
        loader = DataLoader(
            train_ds,
            batch_size=cfg.train.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=cfg.train.num_workers,
            drop_last=False,
        )
        loader = accelerator.prepare(loader)
        done_in_epoch = step - epoch * steps_per_epoch
        if done_in_epoch > 0:
            loader = accelerator.skip_first_batches(loader, done_in_epoch * cfg.train.grad_accum)
        terms_acc: dict[str, float] = {}
        micro = 0
        for batch in loader:
            if step - epoch * steps_per_epoch >= steps_per_epoch:
                break
            with accelerator.accumulate(model):
                loss, terms = training_loss(
                    task, penalties, model, batch, step, micro, accelerator.unwrap_model(model)
                )
                terms = dict(terms, loss=float(loss.detach()))
                if accelerator.num_processes > 1:  # every process logs and judges the same (mean) values
                    names = sorted(terms)
                    mean = accelerator.reduce(torch.tensor([terms[k] for k in names]), "mean")
                    terms = dict(zip(names, mean.tolist(), strict=True))
                if not math.isfinite(terms["loss"]):
                    raise stop(f"the loss became {terms['loss']} (terms {terms})")
                accelerator.backward(loss)
                for k, v in terms.items():
                    terms_acc[k] = terms_acc.get(k, 0.0) + v
                micro += 1
                if accelerator.sync_gradients:
                    norm = accelerator.clip_grad_norm_(trainable, cfg.train.max_grad_norm or math.inf)
                    if not math.isfinite(float(norm)):
                        raise stop("the gradients became non-finite")
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            if not fsdp.all_finite(trainable, accelerator):
                raise stop("the weights became non-finite after the optimizer step")
            step += 1
            row = {k: v / micro for k, v in terms_acc.items()}
            row.update(
                step=step, epoch=epoch, lr=scheduler.get_last_lr()[0], seconds=time.perf_counter() - t0
            )
            history.append(row)
            terms_acc, micro = {}, 0
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
            if accelerator.is_main_process and (step % cfg.train.log_every == 0 or step == total_steps):
                _log(log_path, writer, row, fields)
            ends_epoch = step - epoch * steps_per_epoch >= steps_per_epoch or step >= total_steps
            # the epoch's own checkpoint follows validation: never write one step twice
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0 and not ends_epoch:
                save(["last"], epoch)
                accelerator.wait_for_everyone()
            if step >= total_steps:
                break
        epoch_complete = step >= (epoch + 1) * steps_per_epoch or step >= total_steps
        if not epoch_complete:
            break
        epoch += 1
        is_val_epoch = epoch % cfg.train.val_every == 0 or step >= total_steps
        score = None
        # a sharded model's forward needs every process: each validates, the main process logs
        if val_ds is not None and is_val_epoch and (accelerator.is_main_process or sharded):
            score = task.validate(accelerator.unwrap_model(model), val_ds)
            if accelerator.is_main_process:
                history.append({"step": step, "epoch": epoch, val_key: score})
                _log(log_path, writer, history[-1], fields)
                bar.write(f"epoch {epoch}: {task.describe(score)}")
        improved = score is not None and math.isfinite(score) and task.better(score, best)
        if improved:
            best = score
        save(["last", "best"] if improved else ["last"], epoch, score)
        accelerator.wait_for_everyone()  # no process reads or outruns a checkpoint still being written
    bar.close()
    if writer is not None:
        writer.close()
    if accelerator.is_main_process:
        from medpeft.viz import plot_training_curves

        plot_training_curves(history, run_dir / "curves.png", task.metric, task.terms)
        if ckpt.pointed_checkpoints(run_dir):
            write_report(run_dir)
    return TrainResult(run_dir, step, best, task.metric, history, ckpt.resolve_pointer(run_dir, "best"))


def _tensorboard(run_dir: Path, purge_step: int | None = None) -> Any:
    """A TensorBoard writer; on resume, events after the checkpoint are purged (they are redone)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)


def _log(path: Path, writer: Any, row: dict[str, float], fields: list[str]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)
    if writer is not None:
        for k, v in row.items():
            if k not in ("step", "epoch") and v is not None:
                writer.add_scalar(k, v, int(row["step"]))
