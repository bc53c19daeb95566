"""Assemble a task model (backbone + class prompt + adaptation methods) and its optimizer from a config."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medpeft.adapters.registry import get_method
from medpeft.adapters.targets import weight_pattern
from medpeft.backbones import get_backbone
from medpeft.backbones.hub import weights_sha256
from medpeft.backbones.identity import BaseIdentity
from medpeft.config import Config, ConfigError, method_configs
from medpeft.engine.record import AdapterRecord


def configured_class_prompt(
    cfg: Config, label_names: list[str], dim: int, options: dict[str, Any] | None = None
) -> nn.Module | None:
    """``model.class_prompt`` read: none, or :func:`medpeft.models.text.build_class_prompt` with the
    configured text encoder (label-name prompts; ``options``: the backbone's ``TextEncoder`` options) or
    without (learned tokens)."""
    from medpeft.models.text import TextEncoder, build_class_prompt

    if cfg.model.class_prompt == "none":
        return None
    encoder = None
    if cfg.model.class_prompt == "text":
        if not cfg.model.text_encoder:
            raise ConfigError(
                "model.class_prompt is 'text' but model.text_encoder is not set (a CLIP hub id or local dir)"
            )
        encoder = TextEncoder(cfg.model.text_encoder, template=cfg.model.text_template, **(options or {}))
    return build_class_prompt(label_names, dim, encoder)


def load_base(cfg: Config) -> tuple[nn.Module, BaseIdentity]:
    """Load the configured backbone's base model (never falls back to another); presets follow the seed."""
    backbone = get_backbone(str(cfg.model.backbone))
    torch.manual_seed(cfg.train.seed)
    base, identity = backbone.load(cfg.model.base, int(cfg.model.image_size))
    return base, identity.with_seed(cfg.train.seed)


def build_model(
    cfg: Config,
    label_names: list[str],
    expected: BaseIdentity | None = None,
    expected_depth: BaseIdentity | None = None,
) -> tuple[nn.Module, BaseIdentity]:
    """Base model, wrapped for its task (+ class prompt), with the adaptation methods applied and
    exactly the intended tensors trainable.

    ``expected`` / ``expected_depth``: the recorded identities of the base (and of a depth-guided model's
    Depth Anything) an adapter was trained on; their weights hashes must match. A depth-guided model
    carries its depth weights' identity as ``model.depth_identity``.
    """
    backbone = get_backbone(str(cfg.model.backbone))
    base, identity = load_base(cfg)
    if expected is not None:
        check_base_identity(base, expected)
    if cfg.model.window_size is not None:
        if backbone.name != "sam":
            raise ValueError(f"model.window_size: only SAM's windowed ViT has one, not {backbone.name}")
        from medpeft.backbones.sam.resize import with_window

        base = with_window(base, cfg.model.window_size)
    torch.manual_seed(cfg.train.seed + 1)
    class_prompt = None
    if backbone.prompt_dim is not None:
        options = backbone.text_options(base) if backbone.text_options is not None else None
        class_prompt = configured_class_prompt(cfg, label_names, backbone.prompt_dim(base), options)
    model = backbone.wrap(base, label_names, class_prompt)
    if cfg.task == "selfsup_depth":
        model = selfsup_depth(model, cfg)
    if cfg.model.depth_guided is not None:
        model = depth_guided(model, cfg)
        if expected_depth is not None and model.depth is not None:
            check_base_identity(model.depth.dpt, expected_depth)
    model.base_state_keys = frozenset(model.state_dict())  # what a merge must come back to
    model.requires_grad_(False)
    if class_prompt is not None:
        for p in class_prompt.parameters():
            p.requires_grad_(True)
    apply_methods(model, cfg)
    if cfg.task == "selfsup_depth":  # the pose network always trains
        model.pose.requires_grad_(True)
        if cfg.selfsup.pose_lr is not None:
            model.method_lr.update(
                {f"pose.{n}": cfg.selfsup.pose_lr for n, _ in model.pose.named_parameters()}
            )
    if cfg.model.depth_guided is not None:
        if model.depth is not None:  # methods on the depth encoder, through its own target table
            depth_lr = apply_methods(model.depth, cfg, cfg.model.depth_guided.depth_adapters, seed=200)
            model.method_lr.update({f"depth.{n}": lr for n, lr in depth_lr.method_lr.items()})
        for part in (model.fusion, model.stem, model.decoder):  # new modules always train
            if part is not None:
                part.requires_grad_(True)
    return model, identity


def selfsup_depth(depth: nn.Module, cfg: Config) -> nn.Module:
    """A depth model with a pose network for self-supervised training (``selfsup`` config; seeded)."""
    from medpeft.models.selfsup_depth import SelfSupervisedDepth

    s = cfg.selfsup
    torch.manual_seed(cfg.train.seed + 4)
    return SelfSupervisedDepth(depth, s.min_depth, s.max_depth, s.scales, s.pose_encoder)


def depth_guided(segmenter: nn.Module, cfg: Config) -> nn.Module:
    """Wrap a SAM / SAM2 segmenter as ``model.depth_guided`` configures (new modules seeded)."""
    from medpeft.models.depth_guided import DepthGuidedSegmenter

    dg = cfg.model.depth_guided
    depth = None
    if dg.depth_source == "depth_anything":
        backbone = get_backbone("depth_anything")
        torch.manual_seed(cfg.train.seed + 2)
        size = max(14, int(cfg.model.image_size) // 14 * 14)
        dpt, identity = backbone.load(dg.depth_model, size)
        depth = backbone.wrap(dpt, [], None)
    torch.manual_seed(cfg.train.seed + 3)
    model = DepthGuidedSegmenter(
        segmenter,
        depth,
        dg.depth_source,
        dg.direction,
        dg.heads,
        dg.residual,
        dg.width,
        dg.decoder,
        dg.output,
    )
    model.depth_identity = identity.with_seed(cfg.train.seed + 2) if depth is not None else None
    return model


def apply_methods(
    model: nn.Module, cfg: Config, adapters: list[dict[str, Any]] | None = None, seed: int = 100
) -> nn.Module:
    """Apply the adaptation methods (``adapters``, default ``cfg.adapters``) in order, seeded so that
    re-application is identical.

    Sets ``model.method_lr``: parameter name -> learning rate of the method that made it trainable,
    for methods that set their own ``lr``; and ``model.method_params``: method -> the numbers it made
    trainable (``medpeft info``'s per-method table).
    """
    method_lr: dict[str, float] = {}
    method_params: dict[str, int] = {}
    entries = cfg.adapters if adapters is None else adapters
    for i, (name, method_cfg) in enumerate(method_configs(entries)):
        before = {n for n, p in model.named_parameters() if p.requires_grad}
        torch.manual_seed(cfg.train.seed + seed + i)
        get_method(name).apply(model, method_cfg)
        new = [(n, p) for n, p in model.named_parameters() if p.requires_grad and n not in before]
        key = name if name not in method_params else f"{name} ({i + 1})"
        method_params[key] = sum(p.numel() for _, p in new)
        if method_cfg.lr is not None:
            for n, _ in new:
                method_lr.setdefault(n, method_cfg.lr)
    model.method_lr = method_lr
    model.method_params = method_params
    return model


def merge_methods(model: nn.Module, cfg: Config) -> nn.Module:
    """Fold every weight-changing method back into plain layers."""
    for name, _ in reversed(method_configs(cfg.adapters)):
        method = get_method(name)
        if method.merge is not None:
            method.merge(model)
    return model


def make_record(
    cfg: Config,
    identity: BaseIdentity,
    label_names: list[str],
    parameters: dict[str, int] | None = None,
    depth_identity: BaseIdentity | None = None,
) -> AdapterRecord:
    """The record stored beside every adapter file (step, epoch and scores are set per checkpoint)."""
    return AdapterRecord(
        base_model=identity,
        label_names=list(label_names),
        config=cfg.model_dump(mode="json"),
        methods=[{"name": n, **c.model_dump(mode="json")} for n, c in method_configs(cfg.adapters)],
        backbone=str(cfg.model.backbone),
        task=str(cfg.task),
        image_size=int(cfg.model.image_size),
        class_prompt=cfg.model.class_prompt,
        parameters=parameters or {},
        depth_model=depth_identity,
    )


def check_base_identity(base: nn.Module, identity: BaseIdentity) -> None:
    """Refuse to apply an adapter to different base weights than it was trained on."""
    actual, expected = weights_sha256(base), identity.sha256
    if actual != expected:
        raise ConfigError(
            f"base model {identity.source!r} has weights hash {actual[:12]}..., but the adapter was trained "
            f"on {expected[:12]}...; load the same base weights"
        )


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW (no weight decay on norms, biases and embeddings), or GaLore-AdamW on the targeted matrices."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embed" in name or "norm" in name else decay).append((name, p))
    if not decay and not no_decay:
        raise ConfigError("nothing to train: the configured adapters leave every tensor frozen")
    opt = cfg.optimizer
    if opt.name == "galore_adamw":
        from medpeft.optim import GaLoreAdamW, build_galore_param_groups

        groups = build_galore_param_groups(
            decay,
            [weight_pattern(model, t, "optimizer.targets") for t in opt.targets],
            rank=opt.rank,
            update_gap=opt.update_gap,
            scale=opt.scale,
            projector=opt.projector,
            proj_side=opt.proj_side,
            power_iters=opt.power_iters,
            seed=cfg.train.seed,
            weight_decay=cfg.train.weight_decay,
        )
        if not any(g.get("galore") for g in groups):
            raise ConfigError(
                f"optimizer.targets {opt.targets} match no trainable weight matrix; nothing to project"
            )
        if no_decay:
            groups.append(
                {
                    "params": [p for _, p in no_decay],
                    "param_names": [n for n, _ in no_decay],
                    "weight_decay": 0.0,
                    "galore": False,
                }
            )
        lr_of = _lr_of(model, cfg)
        return GaLoreAdamW(split_by_lr(groups, lr_of), lr=cfg.train.lr, betas=opt.betas, eps=opt.eps)
    groups = [
        {
            "params": [p for _, p in decay],
            "param_names": [n for n, _ in decay],
            "weight_decay": cfg.train.weight_decay,
        },
        {"params": [p for _, p in no_decay], "param_names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]
    groups = split_by_lr([g for g in groups if g["params"]], _lr_of(model, cfg))
    for g in groups:
        g.pop("param_names")
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=opt.betas, eps=opt.eps)


def _lr_of(model: nn.Module, cfg: Config) -> dict[str, float]:
    method_lr = getattr(model, "method_lr", {})
    return {n: method_lr.get(n, cfg.train.lr) for n, p in model.named_parameters() if p.requires_grad}


def split_by_lr(groups: list[dict[str, Any]], lr_of: dict[str, float]) -> list[dict[str, Any]]:
    """Split each parameter group (with ``param_names``) into one group per learning rate (order kept)."""
    out = []
    for group in groups:
        by_lr: dict[float, list[int]] = {}
        for i, name in enumerate(group["param_names"]):
            by_lr.setdefault(lr_of[name], []).append(i)
        for lr, idx in by_lr.items():
            part = dict(group, lr=lr)
            part["params"] = [group["params"][i] for i in idx]
            part["param_names"] = [group["param_names"][i] for i in idx]
            out.append(part)
    return out
