"""The backbone x method contract: every adaptation method works on every backbone through its
symbolic targets, trains exactly what it names, saves and reloads bit for bit, merges exactly, and
``medpeft info`` counts what shapes say it should."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from medpeft.backbones import get_backbone
from medpeft.config import parse_config
from medpeft.engine import checkpoint as ckpt
from medpeft.engine.build import build_model, make_record, merge_methods
from medpeft.engine.report import trainable_share
from medpeft.models.prompts import Prompts

BACKBONES = {
    "sam": ("sam-tiny", 64),
    "sam2": ("sam2-tiny", 64),
    "depth_anything": ("depth-anything-tiny", 56),
    "segvol": ("segvol-tiny", 32),
}
LABELS = ["a", "b"]
METHODS: dict[str, list[dict]] = {
    "lora": [{"name": "lora", "r": 2}],
    "lora_qv": [{"name": "lora", "r": 2, "qv": True}],
    "lora_mlp": [{"name": "lora", "r": 2, "targets": "mlp"}],
    "vector_lora": [{"name": "vector_lora", "r_max": 4, "r_min": 2}],
    "svd": [{"name": "svd"}],
    "layernorm": [{"name": "layernorm"}],
    "bias": [{"name": "bias"}],
    "pos_embed": [{"name": "pos_embed"}],
    "decoder": [{"name": "decoder"}],
    "attention_weights": [{"name": "attention_weights"}],
    "full": [{"name": "full"}],
}
MERGES = {"lora", "lora_qv", "lora_mlp", "vector_lora", "svd"}


def _cfg(backbone: str, method: str, tmp_path) -> object:
    base, size = BACKBONES[backbone]
    return parse_config(
        {
            "model": {"base": base, "image_size": size, "class_prompt": "none"},
            "adapters": METHODS[method],
            "train": {"output_dir": str(tmp_path / "run")},
        }
    )


def _inputs(size: int) -> tuple[torch.Tensor, Prompts]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, size, size, generator=gen)
    boxes = torch.tensor([[4.0, 4.0, size / 2, size / 2], [size / 4, size / 4, size - 4.0, size - 4.0]])
    return images, Prompts(boxes=boxes.expand(2, -1, -1).clone())


def _volume_inputs(size: int) -> tuple[torch.Tensor, Prompts]:
    gen = torch.Generator().manual_seed(0)
    volumes = torch.randn(2, 1, 8, size, size, generator=gen)
    boxes = torch.tensor(
        [[1.0, 4.0, 4.0, 4.0, size / 2, size / 2], [2.0, 8.0, 8.0, 7.0, size - 4.0, size - 4.0]]
    )
    return volumes, Prompts(boxes=boxes.expand(2, -1, -1).clone(), text=False)


def _forward(model: nn.Module, backbone: str, size: int) -> torch.Tensor:
    images, prompts = _volume_inputs(size) if backbone == "segvol" else _inputs(size)
    return model(images) if get_backbone(backbone).task == "depth" else model(images, prompts)


def _table(backbone: str, name: str) -> re.Pattern[str]:
    return re.compile(r"(?:.*\.)?(?:" + get_backbone(backbone).targets[name] + r")(?:\..*)?")


def _linears(base: nn.Module, backbone: str, name: str) -> list[nn.Linear]:
    pattern = re.compile(r"(?:.*\.)?(?:" + get_backbone(backbone).targets[name] + ")")
    return [m for n, m in base.named_modules() if isinstance(m, nn.Linear) and pattern.fullmatch(n)]


def expected_trainable(backbone: str, method: str, size: int) -> int:
    """The number of trained values, from the base model's shapes and the backbone's table alone."""
    torch.manual_seed(0)
    base, _ = get_backbone(backbone).load(BACKBONES[backbone][0], size)
    if method in ("lora", "lora_mlp"):
        return sum(
            2 * (m.in_features + m.out_features)
            for m in _linears(base, backbone, "qkv" if method == "lora" else "mlp")
        )
    if method == "lora_qv":
        if "q" in get_backbone(backbone).targets:  # separate projections: LoRA on q and on v
            return sum(
                2 * (m.in_features + m.out_features) for k in ("q", "v") for m in _linears(base, backbone, k)
            )
        return sum(2 * 2 * (m.in_features + m.out_features // 3) for m in _linears(base, backbone, "qkv"))
    if method == "vector_lora":
        blocks = re.compile(r"(?:.*\.)?(?:" + get_backbone(backbone).targets["blocks"] + ")")
        qkv = re.compile(r"(?:.*\.)?(?:" + get_backbone(backbone).targets["qkv"] + ")")
        named = [(n, m) for n, m in base.named_modules() if isinstance(m, nn.Linear) and qkv.fullmatch(n)]
        n_blocks = 1 + max(int(blocks.fullmatch(n).group(1)) for n, _ in named)
        ranks = [math.floor(4 + (2 - 4) * i / (n_blocks - 1) + 0.5) for i in range(n_blocks)]  # half up
        return sum(
            ranks[int(blocks.fullmatch(n).group(1))] * (m.in_features + m.out_features) for n, m in named
        )
    if method == "svd":
        return sum(2 * min(m.in_features, m.out_features) for m in _linears(base, backbone, "all"))
    if method == "layernorm":
        norms = _table(backbone, "encoder_norms")
        return sum(
            p.numel()
            for n, m in base.named_modules()
            if isinstance(m, nn.LayerNorm) and norms.fullmatch(n)
            for p in m.parameters()
        )
    if method == "bias":
        return sum(p.numel() for n, p in base.named_parameters() if n.endswith(".bias"))
    if method == "pos_embed":
        pattern = re.compile(r"(?:.*\.)?(?:" + get_backbone(backbone).targets["pos_embed"] + ")")
        return sum(p.numel() for n, p in base.named_parameters() if pattern.fullmatch(n))
    if method == "decoder":  # whole modules: a tensor tied into one (SAM's positional matrix) trains too
        parts = [
            re.compile(r"(?:.*\.)?(?:" + get_backbone(backbone).targets[k] + ")")
            for k in ("decoder", "prompt_encoder")
            if k in get_backbone(backbone).targets
        ]
        params = {
            id(p): p
            for n, m in base.named_modules()
            if any(t.fullmatch(n) for t in parts)
            for p in m.parameters()
        }
        return sum(p.numel() for p in params.values())
    if method == "attention_weights":
        return sum(m.weight.numel() for m in _linears(base, backbone, "attn"))
    return sum(p.numel() for p in base.parameters())


@pytest.fixture(scope="module")
def unused() -> dict[str, set[str]]:
    """Parameters no forward pass reaches (DINOv2's mask token, SAM's mask-input encoder, ...), found by
    training everything once: a method may name them, but they cannot get a gradient."""
    out = {}
    for backbone, (_, size) in BACKBONES.items():
        cfg = parse_config(
            {
                "model": {"base": BACKBONES[backbone][0], "image_size": size, "class_prompt": "none"},
                "adapters": [{"name": "full"}],
            }
        )
        model, _ = build_model(cfg, LABELS)
        _forward(model, backbone, size).pow(2).mean().backward()
        out[backbone] = {n for n, p in model.named_parameters() if p.grad is None}
    return out


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_contract(backbone: str, method: str, tmp_path, unused) -> None:
    size = BACKBONES[backbone][1]
    cfg = _cfg(backbone, method, tmp_path)
    model, identity = build_model(cfg, LABELS)

    # gradients reach exactly the tensors the method trains
    out = _forward(model, backbone, size)
    assert out.shape[:2] == ((2, 1) if get_backbone(backbone).task == "depth" else (2, 2))
    out.pow(2).mean().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trainable and with_grad <= trainable
    assert trainable - with_grad <= unused[backbone]

    # medpeft info's count equals the count from the base model's shapes
    assert trainable_share(model)[0] == expected_trainable(backbone, method, size)

    # adapter save/load reproduces the outputs bit for bit
    with torch.no_grad():
        for p in (p for p in model.parameters() if p.requires_grad):
            p.add_(0.01 * torch.randn_like(p))  # as if trained
        model.eval()
        before = _forward(model, backbone, size)
    record = make_record(cfg, identity, LABELS).at(1, 0)
    directory = ckpt.write_checkpoint(tmp_path / "ckpt", model, record)
    fresh, _ = build_model(cfg, LABELS, expected=identity)
    ckpt.load_adapter_tensors(fresh, directory)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(_forward(fresh, backbone, size), before)

        # merging folds the method into plain weights with the same outputs
        if method in MERGES:
            merge_methods(fresh, cfg)
            assert set(fresh.state_dict()) == fresh.base_state_keys
            torch.testing.assert_close(_forward(fresh, backbone, size), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_galore_targets_resolve_on_every_backbone(backbone: str, tmp_path) -> None:
    from medpeft.engine.build import build_optimizer

    cfg = _cfg(backbone, "attention_weights", tmp_path)
    cfg.optimizer.name, cfg.optimizer.rank = "galore_adamw", 2
    model, _ = build_model(cfg, LABELS)
    groups = build_optimizer(cfg, model).param_groups
    projected = [n for g in groups if g.get("galore") for n in g["param_names"]]
    assert len(projected) == len(_linears(model, backbone, "attn"))


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_gradient_checkpointing_keeps_gradients(backbone: str, tmp_path) -> None:
    """Checkpointed encoder blocks give the same loss and gradients (LoRA inside the blocks, so the
    recomputed forward must carry the adapters)."""
    from medpeft.engine.grad_checkpoint import enable_gradient_checkpointing

    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model, _ = build_model(_cfg(backbone, "lora", tmp_path), LABELS)
        model.train()
        if checkpointed:
            assert enable_gradient_checkpointing(model) >= 2
        out = _forward(model, get_backbone(backbone).name, BACKBONES[backbone][1])
        out.pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)
