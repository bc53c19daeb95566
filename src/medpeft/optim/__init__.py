"""medpeft.optim: GaLore / SRFT-GaLore optimizer and low-rank gradient projectors."""

from .galore import (
    GaLoreAdamW,
    adamw_state_numel,
    build_galore_param_groups,
    optimizer_state_numel,
)
from .projectors import (
    PROJECTORS,
    captured_energy,
    compute_basis,
    make_generator,
    project,
    project_back,
    projector_seed,
    register_projector,
    resolve_side,
)

__all__ = [
    "PROJECTORS",
    "GaLoreAdamW",
    "adamw_state_numel",
    "build_galore_param_groups",
    "captured_energy",
    "compute_basis",
    "make_generator",
    "optimizer_state_numel",
    "project",
    "project_back",
    "projector_seed",
    "register_projector",
    "resolve_side",
]
