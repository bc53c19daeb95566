"""Registry of adaptation methods: config name -> (config model, apply, merge).

Each method lives in its own module and registers itself with :func:`register_method`; targets are
symbolic names the model's backbone maps (:mod:`medpeft.adapters.targets`) or regexes.
`apply(model, cfg)` modifies the model in place (wrapping layers, unfreezing tensors) and returns it;
`merge(model)` folds weight changes back into plain layers where the method changes weights.
The engine freezes the whole model before applying the configured methods in order, so a method
only turns on ``requires_grad`` for what it trains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn


class MethodConfig(BaseModel):
    """Base class of every method's config: unknown keys are errors.

    ``lr``: this method's own learning rate (default: ``train.lr``), as papers tune adapters and
    decoders apart (SAMed trains LoRA at 5e-3); the schedule scales every group alike.
    """

    model_config = ConfigDict(extra="forbid")
    lr: float | None = Field(None, gt=0)


@dataclass(frozen=True)
class AdapterMethod:
    """One registered adaptation method."""

    name: str
    config_cls: type[MethodConfig]
    apply: Callable[[nn.Module, MethodConfig], nn.Module]
    merge: Callable[[nn.Module], nn.Module] | None = None
    penalty: Callable[[nn.Module], Tensor] | None = None
    penalty_name: str | None = None


_METHODS: dict[str, AdapterMethod] = {}


def register_method(
    name: str,
    config_cls: type[MethodConfig],
    merge: Callable[[nn.Module], nn.Module] | None = None,
    penalty: Callable[[nn.Module], Tensor] | None = None,
    penalty_name: str | None = None,
) -> Callable[
    [Callable[[nn.Module, MethodConfig], nn.Module]], Callable[[nn.Module, MethodConfig], nn.Module]
]:
    """Decorator registering ``apply`` under ``name``.

    ``penalty(model)``: a loss term the method adds (S-SAM's regulariser), logged as ``penalty_name``;
    the training loop adds every configured method's term without importing the method's module.
    """

    def wrap(
        apply: Callable[[nn.Module, MethodConfig], nn.Module],
    ) -> Callable[[nn.Module, MethodConfig], nn.Module]:
        if name in _METHODS:
            raise ValueError(f"adaptation method {name!r} is registered twice")
        _METHODS[name] = AdapterMethod(
            name, config_cls, apply, merge, penalty, penalty_name or f"{name}_penalty"
        )
        return apply

    return wrap


def get_method(name: str) -> AdapterMethod:
    """Look up a method by its config name, with the list of valid names on error."""
    _load_builtin_methods()
    if name not in _METHODS:
        raise KeyError(f"unknown adaptation method {name!r}; expected one of: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def available_methods() -> list[str]:
    """Names of all registered methods."""
    _load_builtin_methods()
    return sorted(_METHODS)


def _load_builtin_methods() -> None:
    """Import the built-in method modules so that they register themselves."""
    from medpeft.adapters import builtin  # noqa: F401
