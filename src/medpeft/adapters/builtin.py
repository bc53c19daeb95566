"""Imports every built-in adaptation method so that it registers itself."""

# ruff: noqa: F401
