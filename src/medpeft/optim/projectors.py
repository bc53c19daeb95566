"""Orthonormal low-rank bases of gradient matrices for GaLore-style optimizers.

A projector maps a gradient ``G`` of shape ``[m, n]`` and a rank ``r`` to a real matrix with ``r``
orthonormal columns that (approximately) spans the dominant singular subspace of one side of ``G``:

* ``left``: ``P`` of shape ``[m, r]`` (column space); the projected gradient is ``P^T G`` (``[r, n]``).
* ``right``: ``Q`` of shape ``[n, r]`` (row space); the projected gradient is ``G Q`` (``[m, r]``).
* ``auto``: the side of the smaller dimension (``left`` when ``m <= n``), as in GaLore, so the
  projected gradient and Adam's moments are ``r x max(m, n)``.

Methods (:data:`PROJECTORS`):

* ``svd``: exact, truncated full SVD (``torch.linalg.svd``). ``power_iters`` is accepted and ignored.
* ``srft``: subsampled randomized Fourier transform sketch (SRFT-GaLore, Lin et al., arXiv 2511.03163):
  random signs ``D``, real FFT along the sketched axis, uniform subsampling of ``ceil(r/2)``
  non-redundant frequencies whose real and imaginary parts give ``r`` real sketch columns (for a
  real input the frequencies ``j`` and ``n - j`` are complex conjugates, so their real span is the
  same: the real and imaginary parts of the non-redundant ones are the real sketch), then QR.
* ``gaussian``: Gaussian sketch ``G @ Omega`` then QR.

Randomized methods may run ``power_iters`` rounds of subspace iteration (``Y <- G G^T Y`` with QR
re-orthonormalisation in between), which sharpens the basis when the spectrum decays slowly.

All randomness comes from a CPU :class:`torch.Generator` seeded from ``(seed, step, name)`` by a
stable hash (:func:`projector_seed`), so every process of a multi-process run derives the same
projector from the same (all-reduced) gradient without communicating.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Literal

import torch

Side = Literal["left", "right"]
SideSpec = Literal["left", "right", "auto"]
BasisFn = Callable[[torch.Tensor, int, int, torch.Generator], torch.Tensor]
"""``fn(mat, rank, power_iters, generator) -> [m, rank]`` orthonormal basis of the column space of ``mat``."""

PROJECTORS: dict[str, BasisFn] = {}
SIDES: tuple[str, ...] = ("left", "right", "auto")


def register_projector(name: str) -> Callable[[BasisFn], BasisFn]:
    """Decorator registering a left-basis function under ``name``."""

    def wrap(fn: BasisFn) -> BasisFn:
        if name in PROJECTORS:
            raise ValueError(f"projector {name!r} is registered twice")
        PROJECTORS[name] = fn
        return fn

    return wrap


def projector_seed(seed: int, step: int, name: str) -> int:
    """Stable 63-bit seed from ``(seed, step, name)`` (blake2b; independent of ``PYTHONHASHSEED``)."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(step)}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def make_generator(seed: int, step: int, name: str) -> torch.Generator:
    """CPU generator seeded by :func:`projector_seed` (CPU so the draws do not depend on the device)."""
    return torch.Generator(device="cpu").manual_seed(projector_seed(seed, step, name))


def resolve_side(shape: tuple[int, ...] | torch.Size, side: str = "auto") -> Side:
    """Which side to project a ``[m, n]`` matrix on: ``auto`` picks the smaller dimension (left if ``m <= n``)."""
    if len(shape) != 2:
        raise ValueError(f"projectors need a matrix, got shape {tuple(shape)}")
    if side == "auto":
        return "left" if shape[0] <= shape[1] else "right"
    if side not in ("left", "right"):
        raise ValueError(f"proj_side must be one of {SIDES}, got {side!r}")
    return side  # type: ignore[return-value]


def effective_rank(shape: tuple[int, ...] | torch.Size, rank: int) -> int:
    """The rank actually used: ``rank`` clipped to ``min(m, n)``."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    return min(int(rank), int(shape[0]), int(shape[1]))


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _orth(y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of ``y``'s columns (Householder QR: orthonormal even when ``y`` is rank deficient)."""
    q, _ = torch.linalg.qr(y, mode="reduced")
    return q


def _subspace_iteration(mat: torch.Tensor, q: torch.Tensor, power_iters: int) -> torch.Tensor:
    for _ in range(power_iters):
        z = _orth(mat.mT @ q)
        q = _orth(mat @ z)
    return q


@register_projector("svd")
def svd_basis(mat: torch.Tensor, rank: int, power_iters: int, generator: torch.Generator) -> torch.Tensor:
    """Exact: leading ``rank`` left singular vectors from a full (not randomized) SVD."""
    u, _, _ = torch.linalg.svd(mat, full_matrices=False)
    return u[:, :rank]


@register_projector("gaussian")
def gaussian_basis(
    mat: torch.Tensor, rank: int, power_iters: int, generator: torch.Generator
) -> torch.Tensor:
    """Gaussian range finder: ``QR(mat @ Omega)`` with ``Omega ~ N(0, 1)^{n x rank}``."""
    omega = torch.randn(mat.shape[1], rank, generator=generator, dtype=mat.dtype).to(mat.device)
    return _subspace_iteration(mat, _orth(mat @ omega), power_iters)


def srft_sketch(mat: torch.Tensor, rank: int, generator: torch.Generator) -> torch.Tensor:
    """Real SRFT sketch ``mat @ (D F S)`` of shape ``[m, rank]`` (FFT along ``dim=1``, length ``n``).

    ``rfft`` gives frequencies ``0..n//2``; ``1..(n-1)//2`` have non-zero real and imaginary parts,
    each contributing two real columns (a cosine and a sine test vector, all mutually orthogonal).
    ``ceil(rank/2)`` of them are drawn uniformly without replacement; the DC and Nyquist columns
    (real only) are used only when ``rank`` exceeds what the paired frequencies provide, which
    makes every ``rank <= n`` reachable.
    """
    m, n = mat.shape
    if not 1 <= rank <= n:
        raise ValueError(f"srft rank must be in [1, {n}], got {rank}")
    signs = torch.randint(0, 2, (n,), generator=generator).to(device=mat.device, dtype=mat.dtype) * 2 - 1
    spec = torch.fft.rfft(mat * signs, dim=1, norm="ortho")  # [m, n//2 + 1] complex
    n_pairs = (n - 1) // 2
    k = (rank + 1) // 2
    if k <= n_pairs:
        freqs = torch.randperm(n_pairs, generator=generator)[:k] + 1
        sel = spec[:, freqs.to(mat.device)]
        cols = torch.stack([sel.real, sel.imag], dim=2).reshape(m, 2 * k)
    else:  # rank close to n: every paired frequency plus the real-only DC (and Nyquist for even n)
        sel = spec[:, 1 : n_pairs + 1]
        extra = [spec[:, :1].real] + ([spec[:, n // 2 : n // 2 + 1].real] if n % 2 == 0 else [])
        cols = torch.cat([torch.stack([sel.real, sel.imag], dim=2).reshape(m, 2 * n_pairs), *extra], dim=1)
    return cols[:, :rank].contiguous()


@register_projector("srft")
def srft_basis(mat: torch.Tensor, rank: int, power_iters: int, generator: torch.Generator) -> torch.Tensor:
    """SRFT range finder: ``QR(srft_sketch(mat))`` plus optional power iterations."""
    return _subspace_iteration(mat, _orth(srft_sketch(mat, rank, generator)), power_iters)


def compute_basis(
    grad: torch.Tensor,
    rank: int,
    method: str = "srft",
    side: str = "auto",
    power_iters: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Orthonormal basis of one side of ``grad`` with exactly ``min(rank, m, n)`` columns.

    Returns ``[m, r]`` for the left side, ``[n, r]`` for the right side, in float32 (float64 for
    float64 input), on ``grad``'s device. ``generator`` defaults to a fixed seed (pass
    :func:`make_generator` for per-parameter, per-refresh randomness).
    """
    if method not in PROJECTORS:
        raise ValueError(f"unknown projector {method!r}; available: {sorted(PROJECTORS)}")
    if power_iters < 0:
        raise ValueError(f"power_iters must be >= 0, got {power_iters}")
    resolved = resolve_side(grad.shape, side)
    r = effective_rank(grad.shape, rank)
    mat = grad.detach().to(_work_dtype(grad.dtype))
    if resolved == "right":
        mat = mat.mT
    gen = generator if generator is not None else torch.Generator(device="cpu").manual_seed(0)
    return PROJECTORS[method](mat, r, int(power_iters), gen).contiguous()


def project(grad: torch.Tensor, basis: torch.Tensor, side: Side) -> torch.Tensor:
    """Low-rank coordinates: ``P^T G`` (left, ``[r, n]``) or ``G Q`` (right, ``[m, r]``)."""
    return basis.mT @ grad if side == "left" else grad @ basis


def project_back(low: torch.Tensor, basis: torch.Tensor, side: Side) -> torch.Tensor:
    """Inverse of :func:`project` on the subspace: ``P R`` (left) or ``R Q^T`` (right)."""
    return basis @ low if side == "left" else low @ basis.mT


def captured_energy(grad: torch.Tensor, basis: torch.Tensor, side: Side) -> float:
    """Fraction of ``||G||_F^2`` kept by the projection, ``||P P^T G||_F^2 / ||G||_F^2`` (``P`` orthonormal)."""
    g = grad.detach().to(basis.dtype)
    total = float(g.square().sum())
    if total == 0.0:
        return 1.0
    return float(project(g, basis, side).square().sum()) / total
