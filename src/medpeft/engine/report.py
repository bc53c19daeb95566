"""Parameter accounting for ``medpeft info``."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import nn

from medpeft.adapters.targets import has_target, inside
from medpeft.config import Config

GROUPS = ("encoder", "prompt_encoder", "decoder", "class_prompt")


def group_of(model: nn.Module, name: str) -> str:
    """The part of the model a parameter belongs to: a part the model names itself (``part_prefixes``:
    prefix -> part, e.g. a depth-guided model's fusion), else from its backbone's target table."""
    for prefix, part in getattr(model, "part_prefixes", {}).items():
        if name.startswith(prefix):
            return part
    if name.startswith("class_prompt.") or ".class_prompt." in name:
        return "class_prompt"
    for g in GROUPS[:3]:
        if has_target(model, g) and inside(model, g, "info").fullmatch(name):
            return g
    return "other"


def named_parameter_sizes(model: nn.Module) -> Iterator[tuple[str, int, bool]]:
    """(name, numel, trainable) of every parameter, plus each frozen base weight a module holds in another
    form: S-SAM's SVD layers keep ``U, S, Vh`` instead of ``W`` and declare ``factorised_weight_numel``,
    so shares stay shares of the base model's parameters."""
    for name, p in model.named_parameters():
        yield name, p.numel(), p.requires_grad
    for name, module in model.named_modules():
        numel = getattr(module, "factorised_weight_numel", 0)
        if numel:
            yield f"{name}.weight", numel, False


def parameter_counts(model: nn.Module) -> OrderedDict[str, tuple[int, int]]:
    """(trainable, total) numbers of parameters per model part."""
    parts = (*GROUPS, *dict.fromkeys(getattr(model, "part_prefixes", {}).values()), "other")
    counts: OrderedDict[str, tuple[int, int]] = OrderedDict((g, (0, 0)) for g in parts)
    for name, numel, trains in named_parameter_sizes(model):
        g = group_of(model, name)
        t, n = counts[g]
        counts[g] = (t + (numel if trains else 0), n + numel)
    return OrderedDict((g, c) for g, c in counts.items() if c[1])


def trainable_share(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) over the whole model."""
    sizes = list(named_parameter_sizes(model))
    return sum(n for _, n, trains in sizes if trains), sum(n for _, n, _ in sizes)


def parameter_report(model: nn.Module, cfg: Config) -> str:
    """A table of trainable parameters per part, and the total as a share of the whole model."""
    lines = [
        f"methods: {', '.join(a['name'] for a in cfg.adapters) or 'none'}"
        + (
            f"; on the depth model: {', '.join(a['name'] for a in cfg.model.depth_guided.depth_adapters) or 'none (frozen)'}"
            if cfg.model.depth_guided is not None and cfg.model.depth_guided.depth_source == "depth_anything"
            else ""
        ),
        f"{'part':<24}{'trainable':>14}{'total':>14}{'share':>9}",
    ]
    for g, (t, n) in parameter_counts(model).items():
        lines.append(f"{g:<24}{t:>14,}{n:>14,}{100 * t / n:>8.3f}%")
    t, n = trainable_share(model)
    lines.append(f"{'whole model':<24}{t:>14,}{n:>14,}{100 * t / n:>8.3f}%")
    lines.append(method_table(model, n))
    lines.append(optimizer_report(model, cfg))
    return "\n".join(lines)


def method_table(model: nn.Module, total: int) -> str:
    """Trainable numbers per method, in the order applied, as shares of the whole model (the layout of
    the SegVol reproduction study's Table 3); what no method made trainable (a class prompt) is listed."""
    rows = dict(getattr(model, "method_params", {}))
    rest = trainable_share(model)[0] - sum(rows.values())
    if rest:
        rows["other (class prompt)"] = rest
    lines = [f"{'trainable by method':<24}{'numbers':>14}{'of model':>14}"]
    for name, count in rows.items():
        lines.append(f"{name[:23]:<24}{count:>14,}{100 * count / max(1, total):>13.3f}%")
    return "\n".join(lines)


def optimizer_state_sizes(model: nn.Module, cfg: Config) -> tuple[int, int, torch.optim.Optimizer]:
    """(state numbers of the configured optimizer, of plain AdamW, the optimizer) for the trainable tensors."""
    from medpeft.engine.build import build_optimizer
    from medpeft.optim import adamw_state_numel, optimizer_state_numel

    optimizer = build_optimizer(cfg, model)
    adamw = adamw_state_numel([p for p in model.parameters() if p.requires_grad])
    state = optimizer_state_numel(optimizer) if cfg.optimizer.name != "adamw" else adamw
    return state, adamw, optimizer


def optimizer_report(model: nn.Module, cfg: Config) -> str:
    """Optimizer state size (numbers) of the configured optimizer against plain AdamW's."""
    state, adamw, _ = optimizer_state_sizes(model, cfg)
    line = f"optimizer {cfg.optimizer.name}: state {state:,} numbers vs AdamW {adamw:,} ({100 * state / max(1, adamw):.1f}%)"
    if cfg.optimizer.name == "galore_adamw":
        line += f"; projector {cfg.optimizer.projector}, rank {cfg.optimizer.rank}, refresh every {cfg.optimizer.update_gap} steps"
    return line
