"""The training loop (accelerate): seeded, resumable, logged, validated, checkpointed atomically."""

from __future__ import annotations

import csv
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medpeft.adapters.svd import svd_penalty
from medpeft.config import Config, dump_config
from medpeft.engine import checkpoint as ckpt
from medpeft.engine.build import build_dataset, build_model, build_optimizer, build_splits, make_record
from medpeft.engine.losses import SegmentationLoss
from medpeft.engine.schedule import build_scheduler
from medpeft.engine.validate import validate
from medpeft.models.prompts import Prompts


class RunDirExists(FileExistsError):
    """The output directory holds a user's earlier run."""


class NonFiniteLoss(FloatingPointError):
    """Training produced a NaN or infinite loss."""


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    steps: int
    best_dice: float
    history: list[dict[str, float]] = field(default_factory=list)
    best_checkpoint: Path | None = None


LOG_FIELDS = ["step", "epoch", "lr", "loss", "dice", "bce", "focal", "svd_reg", "val_dice", "seconds"]


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Returns True when resuming; refuses to touch an earlier run unless asked."""
    if resume and ckpt.resolve_pointer(run_dir, "last") is not None:
        return True
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunDirExists(
                f"output directory {run_dir} already holds files; pass --resume to continue it "
                "or --overwrite to replace it (or set train.output_dir)"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return False


def sample_mode(modes: dict[str, float], seed: int, step: int, micro: int) -> str:
    """Prompt mode for one micro-batch, reproducible from (seed, step, micro)."""
    rng = random.Random(seed * 1_000_003 + step * 1_009 + micro)
    names = list(modes)
    return rng.choices(names, weights=[modes[n] for n in names], k=1)[0]


def train(cfg: Config, resume: bool = False, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Fine-tune as configured; resumes from ``run_dir/last.json`` when ``resume``."""
    run_dir = Path(cfg.train.output_dir)
    resuming = prepare_run_dir(run_dir, resume, overwrite)
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.train.grad_accum,
        cpu=cfg.train.cpu,
        mixed_precision=cfg.train.mixed_precision,
    )
    set_seed(cfg.train.seed)
    splits = build_splits(cfg)
    if not splits.train:
        raise ValueError(f"data.root {cfg.data.root}: the training split is empty")
    train_ds = build_dataset(cfg, splits.train, splits.label_names, train=True)
    val_ds = build_dataset(cfg, splits.val, splits.label_names, train=False) if splits.val else None
    model, identity = build_model(cfg, splits.label_names, announce=accelerator.is_main_process)
    optimizer = build_optimizer(cfg, model)
    loss_fn = SegmentationLoss(cfg.loss)

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
    record = make_record(cfg, identity, splits.label_names)

    step, start_epoch, history, best = 0, 0, [], -1.0
    if resuming:
        last = ckpt.resolve_pointer(run_dir, "last")
        ckpt.load_adapter_tensors(model, last)
        state = ckpt.load_training_state(last)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, start_epoch, history, best = state["step"], state["epoch"], state["history"], state["best"]
        if accelerator.is_main_process:
            print(f"[medpeft] resuming {run_dir} from step {step} (epoch {start_epoch})")
    else:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dump_config(cfg), sort_keys=False))

    model, optimizer = accelerator.prepare(model, optimizer)
    writer = _tensorboard(run_dir) if accelerator.is_main_process else None
    log_path = run_dir / "log.csv"

    def save(kind: str, epoch_done: int, val_dice: float | None = None) -> Path:
        directory = run_dir / "checkpoints" / f"step-{step:06d}"
        unwrapped = accelerator.unwrap_model(model)
        rec = dict(record, step=step, epoch=epoch_done, val_dice=val_dice)
        ckpt.save_adapter(directory, unwrapped, rec)
        ckpt.save_training_state(
            directory,
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "epoch": epoch_done,
                "history": history,
                "best": best,
            },
        )
        ckpt.commit_checkpoint(run_dir, directory, "last")
        if kind == "best":
            ckpt.commit_checkpoint(run_dir, directory, "best")
        return directory

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
            mode = sample_mode(cfg.prompts.train_modes, cfg.train.seed, step, micro)
            with accelerator.accumulate(model):
                logits = model(batch["image"], Prompts.from_batch(batch, mode))
                loss, terms = loss_fn(logits, batch["masks"], batch.get("class_valid"))
                penalty = svd_penalty(model)
                if penalty.requires_grad:
                    loss = loss + penalty
                    terms["svd_reg"] = float(penalty.detach())
                if not torch.isfinite(loss):
                    bar.close()
                    raise NonFiniteLoss(
                        f"loss became {loss.item()} at step {step} (terms {terms}); training stopped, the last good "
                        f"checkpoint is {ckpt.resolve_pointer(run_dir, 'last')}; lower train.lr or check the data"
                    )
                accelerator.backward(loss)
                for k, v in dict(terms, loss=float(loss.detach())).items():
                    terms_acc[k] = terms_acc.get(k, 0.0) + v
                micro += 1
                if accelerator.sync_gradients and cfg.train.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
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
                _log(log_path, writer, row)
            if (
                cfg.train.checkpoint_every
                and step % cfg.train.checkpoint_every == 0
                and accelerator.is_main_process
            ):
                save("last", epoch)
            if step >= total_steps:
                break
        epoch_complete = step >= (epoch + 1) * steps_per_epoch or step >= total_steps
        if not epoch_complete:
            break
        epoch += 1
        is_val_epoch = epoch % cfg.train.val_every == 0 or step >= total_steps
        if accelerator.is_main_process:
            val_dice = None
            if val_ds is not None and is_val_epoch:
                val_dice = validate(
                    accelerator.unwrap_model(model), val_ds, cfg.prompts.eval_mode, cfg.train.batch_size
                )
                history.append({"step": step, "epoch": epoch, "val_dice": val_dice})
                _log(log_path, writer, history[-1])
                bar.write(f"epoch {epoch}: validation Dice {val_dice:.4f} ({cfg.prompts.eval_mode} prompts)")
            improved = val_dice is not None and val_dice > best
            if improved:
                best = val_dice
            save("best" if improved or (val_ds is None) else "last", epoch, val_dice)
    bar.close()
    if writer is not None:
        writer.close()
    if accelerator.is_main_process:
        from medpeft.viz import plot_training_curves

        plot_training_curves(history, run_dir / "curves.png")
    return TrainResult(run_dir, step, best, history, ckpt.resolve_pointer(run_dir, "best"))


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _log(path: Path, writer: Any, row: dict[str, float]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)
    if writer is not None:
        for k, v in row.items():
            if k not in ("step", "epoch") and v is not None:
                writer.add_scalar(k, v, int(row["step"]))
