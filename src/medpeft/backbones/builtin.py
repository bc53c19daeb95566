"""Imports every built-in backbone so that it registers itself."""

# ruff: noqa: F401
from medpeft.backbones import depth_anything, sam, sam2, segvol, unet
