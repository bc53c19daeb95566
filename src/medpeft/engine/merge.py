"""``medpeft merge``: fold adapters into plain weights and write the backbone's transformers model directory."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import save_file

from medpeft.engine.build import merge_methods
from medpeft.engine.record import AdapterRecord
from medpeft.engine.restore import load_trained
from medpeft.models.prompts import Prompts

T = TypeVar("T")
HEAD_FILE = "medpeft_head.safetensors"
HEAD_RECORD = "medpeft_head.json"


@torch.no_grad()
def merge_checkpoint(checkpoint: Path | str, out: Path, seed: int = 0) -> float:
    """Merge and save; returns the max |logit| difference before/after merging on a probe input.

    The model is written to a temporary folder and renamed to ``out``; an existing ``out`` is replaced
    only when it is an earlier merge output (callers ask the user first).
    """
    if out.exists() and any(out.iterdir()) and not (out / HEAD_RECORD).is_file():
        raise ValueError(f"{out} holds files that are not a medpeft merge output; refusing to replace them")
    model, record, cfg = load_trained(checkpoint)
    base = getattr(model, "transformers_model", None)
    if cfg.task == "selfsup_depth":
        raise ValueError(
            f"{checkpoint} is a self-supervised depth model: its disparity is a sigmoid of the DPT head mapped "
            "to selfsup.min_depth..max_depth, which a plain Depth Anything folder cannot express; predict and "
            "evaluate from the checkpoint itself"
        )
    if base is None and cfg.model.depth_guided is not None:
        raise ValueError(
            f"{checkpoint} is a depth-guided model ({cfg.model.backbone} + fusion); it has no single "
            "transformers format to merge into: predict and evaluate from the checkpoint itself"
        )
    save = getattr(model, "save_base", None) or (base.save_pretrained if base is not None else None)
    if save is None:
        raise ValueError(f"backbone {cfg.model.backbone!r} has no transformers format to merge into")
    gen = torch.Generator().manual_seed(seed)
    probe_input, probe_prompts = _probe(model, int(cfg.model.image_size), gen)
    before = model(probe_input, probe_prompts)
    fold_adapters(model, cfg)
    after = model(probe_input, probe_prompts)
    diff = float((before - after).abs().max())

    def write(tmp: Path) -> None:
        save(tmp)
        _write_head(model, record, str(checkpoint), diff, tmp)

    replace_folder(out, write)
    return diff


def fold_adapters(model: torch.nn.Module, cfg: Any) -> None:
    """Merge every method into the base's own tensors, checking that no adapter tensor is left."""
    merge_methods(model, cfg)
    leftover = sorted(set(model.state_dict()) - model.base_state_keys)
    if leftover:  # every method folded into the base's own tensors, or the merge is not plain weights
        raise RuntimeError(f"merge left adapter tensors behind: {leftover[:5]}")


def replace_folder(out: Path, write: Callable[[Path], T]) -> T:
    """Build a folder with ``write`` in a temporary sibling and rename it to ``out``: ``out`` is either the
    complete new folder or what it was (callers check that an existing ``out`` is theirs to replace)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    try:
        result = write(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _probe(model: torch.nn.Module, size: int, gen: torch.Generator) -> tuple[torch.Tensor, Prompts | None]:
    """A random input (and, for a volume model, a box per class) to compare outputs before and after."""
    if getattr(model, "spatial_dims", 2) == 3:
        roi = tuple(model.roi)
        boxes = torch.tensor([[0.0, 0.0, 0.0, *(r - 1.0 for r in roi)]]).expand(1, len(model.label_names), 6)
        return torch.randn(1, 1, *roi, generator=gen), Prompts(boxes=boxes, text=False)
    return torch.randn(1, 3, size, size, generator=gen), None


def _write_head(model: torch.nn.Module, record: AdapterRecord, source: str, diff: float, out: Path) -> None:
    """What the transformers folder cannot hold: the class-prompt head and the label names."""
    if getattr(model, "class_prompt", None) is not None:
        head = {n: p.detach().contiguous() for n, p in model.class_prompt.state_dict().items()}
        save_file(head, str(out / HEAD_FILE))
    (out / HEAD_RECORD).write_text(
        json.dumps(
            {
                "label_names": record.label_names,
                "class_prompt": record.class_prompt,
                "merged_from": source,
                "max_abs_logit_difference": diff,
            },
            indent=2,
        )
    )
