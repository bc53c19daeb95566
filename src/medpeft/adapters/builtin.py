"""Imports every built-in adaptation method so that it registers itself."""

# ruff: noqa: F401
from medpeft.adapters import attention_weights, decoder, full, lora, norms, pos_embed, steerable, svd
