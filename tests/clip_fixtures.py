"""A tiny offline CLIP text model + tokenizer, saved to a directory that ``TextEncoder`` can load."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

TINY_CLIP_PROJECTION_DIM = 16


def save_tiny_clip(path: Path, seed: int = 0) -> Path:
    """Write a character-level CLIP BPE vocabulary (no merges) and a 2-layer text model to ``path``.

    The model is 32 wide and projects to ``TINY_CLIP_PROJECTION_DIM`` (16); weights are seeded.
    """
    letters = list(string.ascii_lowercase)
    tokens = letters + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        projection_dim=TINY_CLIP_PROJECTION_DIM,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    CLIPTextModelWithProjection(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
