"""LoRA on the query and value slices of SAM's fused qkv projection, as SAMed does.

Hand-written because peft targets whole modules and cannot adapt slices of one fused projection.
"""

from __future__ import annotations

import torch
from torch import nn

from medpeft.adapters.targets import replace_module


class QVLoraLinear(nn.Module):
    """A frozen fused qkv ``nn.Linear`` plus low-rank updates on its q and v output slices."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if base.out_features % 3:
            raise ValueError(
                f"q/v LoRA expects a fused qkv layer (out_features divisible by 3), got {base.out_features}"
            )
        self.base_layer = base
        self.dim = base.out_features // 3
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A_q = nn.Linear(base.in_features, r, bias=False)
        self.lora_B_q = nn.Linear(r, self.dim, bias=False)
        self.lora_A_v = nn.Linear(base.in_features, r, bias=False)
        self.lora_B_v = nn.Linear(r, self.dim, bias=False)
        for a, b in ((self.lora_A_q, self.lora_B_q), (self.lora_A_v, self.lora_B_v)):
            nn.init.kaiming_uniform_(a.weight, a=5**0.5)
            nn.init.zeros_(b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        h = self.dropout(x)
        dq = self.lora_B_q(self.lora_A_q(h)) * self.scaling
        dv = self.lora_B_v(self.lora_A_v(h)) * self.scaling
        zeros = torch.zeros_like(dq)
        return out + torch.cat([dq, zeros, dv], dim=-1)

    def delta_weight(self) -> torch.Tensor:
        """The dense update [3D, K] this adapter adds to the base weight."""
        dq = self.lora_B_q.weight @ self.lora_A_q.weight * self.scaling
        dv = self.lora_B_v.weight @ self.lora_A_v.weight * self.scaling
        return torch.cat([dq, torch.zeros_like(dq), dv], dim=0)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain linear layer with the update folded in."""
        base = self.base_layer
        out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
        out.weight.copy_(base.weight + self.delta_weight().to(base.weight.dtype))
        if base.bias is not None:
            out.bias.copy_(base.bias)
        out.requires_grad_(False)
        return out.to(base.weight.device)


def apply_qv_lora(model: nn.Module, names: list[str], r: int, alpha: float, dropout: float) -> nn.Module:
    """Wrap each named fused qkv layer in :class:`QVLoraLinear`."""
    for name in names:
        base = model.get_submodule(name)
        base.requires_grad_(False)
        wrapped = QVLoraLinear(base, r, alpha, dropout).to(base.weight.device, base.weight.dtype)
        for n, p in wrapped.named_parameters():
            p.requires_grad_(n.startswith("lora_"))
        replace_module(model, name, wrapped)
    return model
