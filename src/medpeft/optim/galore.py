"""GaLore / SRFT-GaLore: AdamW with moments kept in a low-rank subspace of each matrix gradient.

Every ``update_gap`` steps (at the parameter's steps 0, T, 2T, ...) a projector (:mod:`.projectors`)
computes an orthonormal basis ``P`` of rank ``r`` for one side of the current gradient ``G``; in
between, Adam runs on the projected gradient (``P^T G`` or ``G Q``) and the normalised update is
projected back and multiplied by ``scale``. As in GaLore the moments are kept across refreshes
(not reset or rotated). Weight decay is decoupled and acts on the full weight. Parameters that are
not matrices, or sit in a group with ``galore=False``, get plain AdamW (same arithmetic as
``torch.optim.AdamW``).

Written here rather than depending on galore-torch, which drags in bitsandbytes and keeps its
projector as an opaque Python object, so its state neither loads with ``weights_only=True`` nor
resumes to the same projectors.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import Any

import torch
from torch.optim import Optimizer

from .projectors import (
    PROJECTORS,
    SIDES,
    compute_basis,
    effective_rank,
    make_generator,
    project,
    project_back,
    resolve_side,
)

GALORE_GROUP_KEYS: tuple[str, ...] = (
    "galore",
    "rank",
    "update_gap",
    "scale",
    "projector",
    "proj_side",
    "power_iters",
    "seed",
)
_SIDE_CODE = {"left": 0, "right": 1}
_SIDE_NAME = {0: "left", 1: "right"}


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Moments and bases are kept in at least float32 (half/bfloat16 params get float32 state)."""
    return torch.promote_types(dtype, torch.float32)


def param_name(group: dict[str, Any], group_index: int, param_index: int) -> str:
    """Stable name of a parameter for seeding: ``group["param_names"]`` or a positional fallback."""
    names = group.get("param_names")
    if names is not None:
        return str(names[param_index])
    return f"param_groups.{group_index}.{param_index}"


class GaLoreAdamW(Optimizer):
    """AdamW that projects matrix gradients onto a periodically refreshed rank-``rank`` subspace.

    Group options (defaults from the constructor): ``galore`` (project this group's matrices),
    ``rank``, ``update_gap`` (steps between subspace refreshes), ``scale`` (multiplies the
    back-projected update), ``projector`` (``svd``, ``srft``, ``gaussian``), ``proj_side``
    (``left``, ``right``, ``auto``), ``power_iters``, ``seed``, and ``param_names`` (names used to
    seed the projectors; positional names are used when absent). Projector randomness for a
    parameter at step ``t`` is a function of ``(seed, t, name)`` only.

    ``state_dict()`` holds only tensors, ints and floats in the state (``step``, ``exp_avg``,
    ``exp_avg_sq``, and for projected matrices ``proj``, ``proj_side`` (0 left, 1 right),
    ``proj_step``), plus the group options, so it loads with ``torch.load(..., weights_only=True)``
    and a resumed run continues exactly.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, torch.Tensor]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        galore: bool = True,
        rank: int = 128,
        update_gap: int = 200,
        scale: float = 0.25,
        projector: str = "srft",
        proj_side: str = "auto",
        power_iters: int = 0,
        seed: int = 0,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if eps < 0.0:
            raise ValueError(f"invalid eps {eps}")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "galore": galore,
            "rank": rank,
            "update_gap": update_gap,
            "scale": scale,
            "projector": projector,
            "proj_side": proj_side,
            "power_iters": power_iters,
            "seed": seed,
        }
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group and validate its GaLore options."""
        super().add_param_group(param_group)
        _validate_group(self.param_groups[-1])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state, keeping the saved dtypes (the base class would cast float32 state to a half param's dtype)."""
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, p in zip(saved_ids, params, strict=True):
            for key, value in state_dict["state"].get(saved_id, {}).items():
                if isinstance(value, torch.Tensor) and value.dtype != self.state[p][key].dtype:
                    self.state[p][key] = value.to(device=p.device, copy=True)
        for group in self.param_groups:
            _validate_group(group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is not None:
                    self._update(p, group, param_name(group, gi, pi))
        return loss

    def _update(self, p: torch.Tensor, group: dict[str, Any], name: str) -> None:
        grad = p.grad
        assert grad is not None
        if grad.is_sparse:
            raise RuntimeError("GaLoreAdamW does not support sparse gradients")
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        state = self.state[p]
        sdtype = _state_dtype(p.dtype)
        use_galore = bool(group["galore"]) and p.ndim == 2
        step = int(state.get("step", 0))

        g = grad if grad.dtype == sdtype else grad.to(sdtype)
        if use_galore:
            side = resolve_side(p.shape, group["proj_side"])
            if "proj" not in state or step % int(group["update_gap"]) == 0:
                gen = make_generator(group["seed"], step, name)
                basis = compute_basis(
                    g, group["rank"], group["projector"], side, group["power_iters"], generator=gen
                )
                state["proj"] = basis.to(sdtype)
                state["proj_side"] = _SIDE_CODE[side]
                state["proj_step"] = step
            side = _SIDE_NAME[int(state["proj_side"])]
            g = project(g, state["proj"], side)
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(g, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(g, memory_format=torch.preserve_format)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

        step += 1
        state["step"] = step
        if wd != 0.0:
            p.mul_(1.0 - lr * wd)
        exp_avg.lerp_(g, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        bias_correction1 = 1.0 - beta1**step
        bias_correction2_sqrt = (1.0 - beta2**step) ** 0.5
        step_size = lr / bias_correction1
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        if use_galore:
            update = project_back(exp_avg / denom, state["proj"], side)
            p.add_(update.to(p.dtype), alpha=-step_size * float(group["scale"]))
        elif p.dtype == sdtype:
            p.addcdiv_(exp_avg, denom, value=-step_size)
        else:
            p.add_((exp_avg / denom).to(p.dtype), alpha=-step_size)


def _validate_group(group: dict[str, Any]) -> None:
    if group["projector"] not in PROJECTORS:
        raise ValueError(f"unknown projector {group['projector']!r}; available: {sorted(PROJECTORS)}")
    if group["proj_side"] not in SIDES:
        raise ValueError(f"proj_side must be one of {SIDES}, got {group['proj_side']!r}")
    for key, low in (("rank", 1), ("update_gap", 1), ("power_iters", 0)):
        if int(group[key]) < low:
            raise ValueError(f"{key} must be >= {low}, got {group[key]}")
    names = group.get("param_names")
    if names is not None and len(names) != len(group["params"]):
        raise ValueError("param_names must name every parameter of its group")


def build_galore_param_groups(
    named_params: Iterable[tuple[str, torch.Tensor]],
    targets: Sequence[str],
    rank: int = 128,
    update_gap: int = 200,
    scale: float = 0.25,
    projector: str = "srft",
    proj_side: str = "auto",
    power_iters: int = 0,
    seed: int = 0,
    **common: Any,
) -> list[dict[str, Any]]:
    """Split trainable parameters into a GaLore group and a plain-AdamW group.

    A parameter goes to the GaLore group when it is a matrix (``ndim == 2``) and its name matches
    one of ``targets`` (regexes, ``re.search``). Frozen parameters are dropped, shared ones kept
    once. Both groups carry ``param_names`` (used to seed the projectors) and ``common`` options
    (e.g. ``lr``, ``weight_decay``); empty groups are omitted. Warns about targets that match no
    trainable matrix.
    """
    patterns = [re.compile(t) for t in targets]
    hits = [0] * len(patterns)
    galore_named: list[tuple[str, torch.Tensor]] = []
    plain_named: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    for name, p in named_params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        matched = False
        if p.ndim == 2:
            for i, pat in enumerate(patterns):
                if pat.search(name):
                    hits[i] += 1
                    matched = True
        (galore_named if matched else plain_named).append((name, p))
    for target, n in zip(targets, hits, strict=True):
        if n == 0:
            warnings.warn(f"GaLore target {target!r} matches no trainable matrix", stacklevel=2)

    groups: list[dict[str, Any]] = []
    if galore_named:
        groups.append(
            {
                "params": [p for _, p in galore_named],
                "param_names": [n for n, _ in galore_named],
                "galore": True,
                "rank": rank,
                "update_gap": update_gap,
                "scale": scale,
                "projector": projector,
                "proj_side": proj_side,
                "power_iters": power_iters,
                "seed": seed,
                **common,
            }
        )
    if plain_named:
        groups.append(
            {
                "params": [p for _, p in plain_named],
                "param_names": [n for n, _ in plain_named],
                "galore": False,
                "seed": seed,
                **common,
            }
        )
    return groups


def _galore_state_numel(p: torch.Tensor, group: dict[str, Any]) -> int:
    if not (group.get("galore", False) and p.ndim == 2):
        return 2 * p.numel()
    m, n = p.shape
    r = effective_rank(p.shape, int(group["rank"]))
    side = resolve_side(p.shape, group["proj_side"])
    basis_rows, other = (m, n) if side == "left" else (n, m)
    return 2 * r * other + basis_rows * r


def optimizer_state_numel(optimizer: Optimizer) -> int:
    """Elements of tensor state of ``optimizer`` (moments and projector bases) over trainable params.

    Parameters that have no state yet are counted as they will be after their first step (exactly
    for :class:`GaLoreAdamW`; as two moments per element for other optimizers).
    """
    total = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not p.requires_grad:
                continue
            state = optimizer.state.get(p)
            if state:
                total += sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor))
            elif isinstance(optimizer, GaLoreAdamW):
                total += _galore_state_numel(p, group)
            else:
                total += 2 * p.numel()
    return total


def adamw_state_numel(
    params: Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]] | Iterable[dict[str, Any]],
) -> int:
    """Elements of plain AdamW state for the trainable ``params`` (two moments per element)."""
    total = 0
    seen: set[int] = set()
    for item in params:
        if isinstance(item, dict):
            tensors: Iterable[Any] = item["params"]
        elif isinstance(item, tuple):
            tensors = [item[1]]
        else:
            tensors = [item]
        for p in tensors:
            if isinstance(p, tuple):
                p = p[1]
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                total += 2 * p.numel()
    return total
