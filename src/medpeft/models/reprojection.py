"""View synthesis for self-supervised depth (monodepth2): back-project the target frame with its depth,
move the points by the relative camera pose, project them into the source frame and sample it there.

The geometry is kornia's (``depth_to_3d_v2``, ``transform_points``, ``project_points``,
``normalize_pixel_coordinates``, ``axis_angle_to_rotation_matrix``); only the glue is written here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.geometry.camera.perspective import project_points
from kornia.geometry.conversions import axis_angle_to_rotation_matrix, normalize_pixel_coordinates
from kornia.geometry.depth import depth_to_3d_v2
from kornia.geometry.linalg import transform_points


def pose_matrix(axis_angle: torch.Tensor, translation: torch.Tensor, invert: bool = False) -> torch.Tensor:
    """``[B, 4, 4]`` rigid transforms from axis-angle ``[B, 3]`` and translation ``[B, 3]``; ``invert``
    gives the inverse transform (for a pose predicted in the other direction)."""
    rotation = axis_angle_to_rotation_matrix(axis_angle)
    out = torch.eye(4, dtype=axis_angle.dtype, device=axis_angle.device).repeat(axis_angle.shape[0], 1, 1)
    if invert:
        rotation = rotation.transpose(1, 2)
        translation = -(rotation @ translation[:, :, None])[:, :, 0]
    out[:, :3, :3] = rotation
    out[:, :3, 3] = translation
    return out


def reproject(
    source: torch.Tensor, depth: torch.Tensor, target_to_source: torch.Tensor, intrinsics: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The source frame ``[B, C, H, W]`` resampled into the target view, and where that was possible.

    ``depth`` ``[B, 1, H, W]``: the target's depth; ``target_to_source`` ``[B, 4, 4]`` maps target camera
    coordinates to source camera coordinates; ``intrinsics`` ``[B, 3, 3]`` in pixels of this size.
    Returns the warped image (bilinear, border padding) and ``valid`` ``[B, 1, H, W]``: points in front
    of the source camera that land inside its image.
    """
    b, _, h, w = source.shape
    points = depth_to_3d_v2(depth[:, 0], intrinsics).reshape(b, -1, 3)  # target camera coordinates
    moved = transform_points(target_to_source, points)
    z = moved[..., 2:3]
    pixels = project_points(moved, intrinsics[:, None])
    inside = (
        (pixels[..., 0] >= 0) & (pixels[..., 0] <= w - 1) & (pixels[..., 1] >= 0) & (pixels[..., 1] <= h - 1)
    )
    valid = (inside & (z[..., 0] > 1e-6)).reshape(b, 1, h, w)
    grid = normalize_pixel_coordinates(pixels, h, w).reshape(b, h, w, 2)
    warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return warped, valid
