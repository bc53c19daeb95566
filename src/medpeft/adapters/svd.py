"""S-SAM singular-value tuning (Paranjape et al.): ``W' = U diag(ReLU(A * S + B)) Vh``.

Hand-written because peft has no singular-value tuner (AdaLoRA learns a new SVD-shaped delta, it does
not rescale the spectrum of the pretrained weight). Per adapted ``[D, K]`` matrix only the scale ``A``
(init 1) and shift ``B`` (init 0), each of length ``min(D, K)``, are trained; ``U, S, Vh`` are frozen,
non-persistent buffers recomputed from the base weight (the signs SVD picks for ``u_i, v_i`` cancel in
``W'``, so the per-index ``A, B`` mean the same thing after any recomputation).

The layer keeps ``U, S, Vh`` *instead of* the base weight (which they reproduce to float rounding), so
it costs ``r (D + K) + r`` numbers where LoRA's base layer costs ``D K``. ``weight`` is rebuilt on
demand, the state dict still holds it under its original key (a loaded ``weight`` re-decomposes), and
``factorised_weight_numel`` lets parameter accounting count it as the frozen base parameter it is.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from medpeft.adapters.registry import MethodConfig, register_method
from medpeft.adapters.targets import SYMBOLIC, name_matcher, replace_module

Mode = Literal["auto", "factorised", "rebuild"]
_MODES: tuple[str, ...] = ("auto", "factorised", "rebuild")

DEFAULT_TARGETS: tuple[str, ...] = ("all",)


class SVDConfig(MethodConfig):
    """Which matrices get singular-value tuning, what is trained and how the forward runs.

    ``targets``: symbolic names the backbone maps (default ``all``: every encoder attention and MLP
    matrix) or regexes searched in module names; ``include_neck`` adds the backbone's ``neck`` convs.
    """

    targets: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS))
    include_neck: bool = False
    include_patch_embed: bool = False  # also the patch embedding (a volume ViT's Conv3d)
    train_scale: bool = True
    train_shift: bool = True
    mode: Mode = "auto"
    reg_weight: float = Field(0.0, ge=0.0)

    @field_validator("targets")
    @classmethod
    def _compile(cls, targets: list[str]) -> list[str]:
        for pattern in targets:
            if pattern in SYMBOLIC:
                continue
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"invalid target regex {pattern!r}: {err}") from None
        return targets


class _SVDLayer(nn.Module):
    """Frozen SVD of the base matrix plus the trainable scale ``A`` and shift ``B``."""

    bias: nn.Parameter | None

    def __init__(
        self, base: nn.Linear | nn.Conv2d | nn.Conv3d, train_scale: bool, train_shift: bool, mode: str
    ) -> None:
        super().__init__()
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.bias = base.bias
        self.weight_shape = tuple(base.weight.shape)
        self.factorised_weight_numel = base.weight.numel()
        rank = min(self.weight_shape[0], base.weight[0].numel())
        kw: dict[str, Any] = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.scale = nn.Parameter(torch.ones(rank, **kw), requires_grad=train_scale)
        self.shift = nn.Parameter(torch.zeros(rank, **kw), requires_grad=train_shift)
        self.mode = mode
        self.reg_weight = 0.0
        self.refresh_factors(base.weight)

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in _MODES:
            raise ValueError(f"unknown SVD mode {value!r}; expected one of: {', '.join(_MODES)}")
        self._mode = value

    @property
    def weight(self) -> Tensor:
        """The frozen base weight ``U diag(S) Vh``, rebuilt (not stored; no gradient)."""
        with torch.no_grad():
            return ((self.U * self.S) @ self.Vh).view(self.weight_shape)

    @torch.no_grad()
    def refresh_factors(self, weight: Tensor) -> None:
        """(Re)compute ``U, S, Vh`` from base ``weight``, in float64, deterministically."""
        if tuple(weight.shape) != self.weight_shape:
            raise ValueError(
                f"base weight of shape {tuple(weight.shape)} for a layer of shape {self.weight_shape}"
            )
        u, s, vh = torch.linalg.svd(weight.detach().flatten(1).double(), full_matrices=False)
        kw: dict[str, Any] = {"device": self.scale.device, "dtype": self.scale.dtype}
        for name, value in (("U", u), ("S", s), ("Vh", vh)):
            self.register_buffer(name, value.to(**kw).contiguous(), persistent=False)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.weight  # under the base layer's key, as if never adapted
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "weight"
        if key in state_dict:  # a new base weight: decompose it (popped, so it is not reported unexpected)
            weight = state_dict.pop(key)
            if tuple(weight.shape) == self.weight_shape:
                self.refresh_factors(weight)
            else:
                error_msgs.append(
                    f"size mismatch for {key}: copying a param with shape {tuple(weight.shape)}, "
                    f"the shape in current model is {self.weight_shape}."
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def singular_values(self) -> Tensor:
        """The tuned spectrum ``ReLU(A * S + B)``."""
        return F.relu(self.scale * self.S + self.shift)

    def effective_matrix(self) -> Tensor:
        """``W'`` as a ``[D, K]`` matrix (conv kernels flattened to ``[out, in * kh * kw]``)."""
        return (self.U * self.singular_values()) @ self.Vh

    def regularizer(self) -> Tensor:
        """``||1 - A||_2 + ||B||_2`` (L2 norms, as in the S-SAM release): 0 at initialisation."""
        return torch.linalg.vector_norm(1 - self.scale) + torch.linalg.vector_norm(self.shift)

    def use_factorised(self, n_tokens: int) -> bool:
        """Mode for ``n_tokens`` rows, in ``auto`` the one with fewer multiply-adds.

        Inference: factorised ``N r (D+K)`` against rebuild ``D K r + N D K``. Training (grad enabled,
        ``A`` or ``B`` trainable) counts the backward pass too: factorised ``2 N r (D+K)`` (input
        gradient through both factors) against rebuild ``2 D K r + 3 N D K`` (building ``W'`` and
        projecting its gradient back onto the spectrum, plus the input and weight gradients).
        """
        if self.mode != "auto":
            return self.mode == "factorised"
        d, r, k = self.U.shape[0], self.S.numel(), self.Vh.shape[1]
        if torch.is_grad_enabled() and (self.scale.requires_grad or self.shift.requires_grad):
            return 2 * n_tokens * r * (d + k) < 2 * d * k * r + 3 * n_tokens * d * k
        return n_tokens * r * (d + k) < d * k * r + n_tokens * d * k

    def _merged_weight(self) -> nn.Parameter:
        with torch.no_grad():
            matrix = (self.U.double() * self.singular_values().double()) @ self.Vh.double()
        return nn.Parameter(matrix.to(self.U.dtype).view(self.weight_shape), requires_grad=False)


class SVDLinear(_SVDLayer):
    """A frozen ``nn.Linear`` with re-weighted singular values, ``y = x W'^T + b``.

    Hand-written because peft has no singular-value tuner.
    """

    def __init__(
        self, base: nn.Linear, *, train_scale: bool = True, train_shift: bool = True, mode: str = "auto"
    ) -> None:
        super().__init__(base, train_scale, train_shift, mode)
        self.in_features, self.out_features = base.in_features, base.out_features

    def forward(self, x: Tensor) -> Tensor:
        if self.use_factorised(x.numel() // max(x.shape[-1], 1)):
            return F.linear(F.linear(x, self.Vh) * self.singular_values(), self.U, self.bias)
        return F.linear(x, self.effective_matrix(), self.bias)

    def merge(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W'`` baked in (same bias tensor)."""
        layer = nn.Linear(self.in_features, self.out_features, bias=False, device="meta")
        layer.weight, layer.bias = self._merged_weight(), self.bias
        return layer


class SVDConv(_SVDLayer):
    """The conv analogue (2D, or 3D such as a volume ViT's patch embedding): the kernel is treated as an
    ``[out, in * prod(kernel)]`` matrix."""

    def __init__(
        self,
        base: nn.Conv2d | nn.Conv3d,
        *,
        train_scale: bool = True,
        train_shift: bool = True,
        mode: str = "auto",
    ) -> None:
        if base.groups != 1 or base.padding_mode != "zeros":
            raise ValueError("SVD convolutions support only groups=1 and padding_mode='zeros'")
        super().__init__(base, train_scale, train_shift, mode)
        self.conv_type = type(base)
        self.in_channels, self.out_channels = base.in_channels, base.out_channels
        self.kernel_size, self.stride = base.kernel_size, base.stride
        self.padding, self.dilation = base.padding, base.dilation

    def forward(self, x: Tensor) -> Tensor:
        dims = len(self.kernel_size)
        conv = F.conv3d if dims == 3 else F.conv2d
        args = {"stride": self.stride, "padding": self.padding, "dilation": self.dilation}
        batch = x.shape[0] if x.dim() == dims + 2 else 1
        positions = batch * math.prod(x.shape[-dims:]) // math.prod(self.stride)
        if self.use_factorised(positions):
            h = conv(x, self.Vh.view(-1, *self.weight_shape[1:]), None, **args)
            h = h * self.singular_values().view(-1, *([1] * dims))
            return conv(h, self.U.view(*self.U.shape, *([1] * dims)), self.bias)
        return conv(x, self.effective_matrix().view(self.weight_shape), self.bias, **args)

    def merge(self) -> nn.Conv2d | nn.Conv3d:
        """A plain convolution of the base's type with ``W'`` baked in (same bias tensor)."""
        layer = self.conv_type(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=False,
            device="meta",
        )
        layer.weight, layer.bias = self._merged_weight(), self.bias
        return layer


def svd_layers(model: nn.Module) -> list[SVDLinear | SVDConv]:
    """All singular-value-tuned layers of ``model``."""
    return [m for m in model.modules() if isinstance(m, SVDLinear | SVDConv)]


def set_svd_mode(model: nn.Module, mode: Mode) -> None:
    """Switch every SVD layer of ``model`` to ``mode``."""
    for layer in svd_layers(model):
        layer.mode = mode


def svd_regularizer(model: nn.Module) -> Tensor:
    """Unweighted ``sum over layers of ||1 - A||_2 + ||B||_2``; 0 at initialisation."""
    terms = [layer.regularizer() for layer in svd_layers(model)]
    return torch.stack(terms).sum() if terms else _zero(model)


def svd_penalty(model: nn.Module) -> Tensor:
    """The regulariser weighted by each layer's configured ``reg_weight``: add it to the loss."""
    terms = [layer.reg_weight * layer.regularizer() for layer in svd_layers(model) if layer.reg_weight]
    return torch.stack(terms).sum() if terms else _zero(model)


def _zero(model: nn.Module) -> Tensor:
    param = next(model.parameters(), None)
    return torch.zeros((), device=param.device if param is not None else None)


@torch.no_grad()
def merge_svd(model: nn.Module) -> nn.Module:
    """Replace every SVD layer by its merged plain ``nn.Linear`` / convolution."""
    for name, module in list(model.named_modules()):
        if isinstance(module, SVDLinear | SVDConv):
            replace_module(model, name, module.merge())
    return model


@register_method("svd", SVDConfig, merge=merge_svd, penalty=svd_penalty, penalty_name="svd_reg")
def apply_svd(model: nn.Module, cfg: SVDConfig) -> nn.Module:
    """Wrap every ``nn.Linear`` / ``nn.Conv2d`` / ``nn.Conv3d`` whose qualified name matches a target regex."""
    targets = [
        *cfg.targets,
        *(["neck"] if cfg.include_neck else []),
        *(["patch_embed"] if cfg.include_patch_embed else []),
    ]
    tests = []
    for target in targets:
        symbolic = name_matcher(model, target, "svd")
        tests.append(symbolic.fullmatch if symbolic is not None else re.compile(target).search)
    kwargs = {"train_scale": cfg.train_scale, "train_shift": cfg.train_shift, "mode": cfg.mode}
    wrapped = 0
    for name, module in list(model.named_modules()):
        if not name or not any(t(name) for t in tests):
            continue
        if isinstance(module, nn.Linear):
            layer: _SVDLayer = SVDLinear(module, **kwargs)
        elif isinstance(module, nn.Conv2d | nn.Conv3d):
            layer = SVDConv(module, **kwargs)
        else:
            continue
        layer.reg_weight = cfg.reg_weight
        replace_module(model, name, layer)
        wrapped += 1
    if not wrapped:
        raise ValueError(f"svd: no nn.Linear/nn.Conv2d/nn.Conv3d matches the targets {targets}")
    return model
