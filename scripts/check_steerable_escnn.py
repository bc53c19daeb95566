"""Compare medpeft's radial patch embedding with escnn's ``R3Conv`` between trivial (scalar) fields.

escnn pins numpy below 2 (through lie-learn), so this runs in its own environment (``make
check-escnn``). For a random ``R3Conv(trivial -> trivial)`` it expands the kernel and reports (1) how far
it is from radially symmetric (the property medpeft's kernels have by construction) and (2) the relative
residual of fitting it with medpeft's radial basis (``medpeft.models.steerable.radial_basis``).

    python scripts/check_steerable_escnn.py --patch 4 --bases 4
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--bases", type=int, default=4)
    args = p.parse_args()
    from escnn import gspaces
    from escnn import nn as enn

    from medpeft.models.steerable import radial_basis

    space = gspaces.rot3dOnR3()
    field = enn.FieldType(space, [space.trivial_repr])
    conv = enn.R3Conv(field, field, kernel_size=args.patch, stride=args.patch, padding=0)
    kernel, _ = conv.expand_parameters()  # [1, 1, k, k, k]
    k = kernel[0, 0].detach().double()
    turned = [torch.rot90(k, 1, dims) for dims in ((0, 1), (0, 2), (1, 2))]
    symmetry = max(float((t - k).abs().max()) for t in turned) / float(k.abs().max())
    basis = radial_basis((args.patch,) * 3, args.bases).double().reshape(args.bases, -1).T  # [k^3, bases]
    coef = torch.linalg.lstsq(basis, k.reshape(-1, 1)).solution
    residual = float((basis @ coef - k.reshape(-1, 1)).norm() / k.norm())
    result = {"patch": args.patch, "bases": args.bases, "rot90_asymmetry": symmetry, "fit_residual": residual}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
