"""An SO(3)-steerable patch embedding between scalar fields, and its side-tuning next to a frozen one
(the SegVol reproduction study's rotation-robust adapter).

A steerable convolution mapping scalar fields to scalar fields has kernels that depend only on the
distance from the kernel centre. So the kernel here is a learned mix of radial basis functions (Gaussian
shells), and no escnn is needed: escnn pins numpy below 2 through lie-learn. With kernel = stride =
an isotropic patch, the embedding is exactly equivariant to the 90-degree rotations of a cubic input
(its patch outputs permute). Hand-written because MONAI has no steerable convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def radial_basis(kernel: tuple[int, int, int], bases: int, width: float | None = None) -> torch.Tensor:
    """``[bases, kz, ky, kx]``: Gaussian shells exp(-(r - r_b)^2 / 2 w^2) of the distance r (voxels) from
    the kernel centre, r_b evenly spaced from 0 to the largest r (each basis normalised to unit sum)."""
    grids = torch.meshgrid(
        *[torch.arange(k, dtype=torch.float64) - (k - 1) / 2 for k in kernel], indexing="ij"
    )
    r = torch.sqrt(sum(g**2 for g in grids))
    centres = torch.linspace(0.0, float(r.max()), bases, dtype=torch.float64)
    w = width if width is not None else float(r.max()) / max(1, bases - 1) or 1.0
    shells = torch.exp(-((r[None] - centres[:, None, None, None]) ** 2) / (2 * w**2))
    return (shells / shells.sum(dim=(1, 2, 3), keepdim=True)).float()


class RadialPatchEmbedding(nn.Module):
    """Patch embedding ``[B, C_in, D, H, W] -> [B, C_out, D/p, H/p, W/p]`` with radial kernels
    (``kernel = stride = patch``): weights ``[C_out, C_in, bases]`` over :func:`radial_basis`."""

    def __init__(
        self, in_channels: int, out_channels: int, patch: tuple[int, int, int], bases: int = 4
    ) -> None:
        super().__init__()
        self.patch = tuple(int(p) for p in patch)
        self.register_buffer("basis", radial_basis(self.patch, bases), persistent=False)
        self.weight = nn.Parameter(
            torch.randn(out_channels, in_channels, bases) / (in_channels * bases) ** 0.5
        )
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def kernel(self) -> torch.Tensor:
        """The convolution kernel ``[C_out, C_in, kz, ky, kx]`` (radially symmetric)."""
        return torch.einsum("oib,bzyx->oizyx", self.weight, self.basis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv3d(x, self.kernel(), self.bias, stride=self.patch)


class SideTunedPatchEmbedding(nn.Module):
    """A frozen patch embedding (e.g. a ViT's ``Conv3d``) beside a trainable radial one; their outputs are
    concatenated along channels and mapped back to the frozen width by a feed-forward adapter
    (``Linear(w + r -> w)``). The adapter starts as the identity on the frozen part and zero on the radial
    part, so the wrapped model starts exactly where the frozen one was."""

    def __init__(self, frozen: nn.Conv3d, radial_channels: int = 32, bases: int = 4) -> None:
        super().__init__()
        self.frozen = frozen.requires_grad_(False)
        width = int(frozen.out_channels)
        self.radial = RadialPatchEmbedding(
            int(frozen.in_channels), radial_channels, tuple(frozen.kernel_size), bases
        )
        self.adapter = nn.Linear(width + radial_channels, width)
        with torch.no_grad():
            self.adapter.weight.zero_()
            self.adapter.weight[:, :width].copy_(torch.eye(width))
            self.adapter.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = torch.cat([self.frozen(x), self.radial(x)], 1)  # [B, w + r, d, h, w]
        return self.adapter(both.movedim(1, -1)).movedim(-1, 1)
