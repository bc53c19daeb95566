"""Fully sharded data parallel training (``train.distributed: fsdp``) through accelerate's FSDP2 path.

Each image-encoder block is its own shard unit (found through the backbone's ``blocks`` target), the rest
of the model (prompt encoder, decoder, neck) is the root unit; frozen and trained tensors are sharded
alike, so a process holds 1/N of the weights, gradients and optimizer state. Checkpoints stay in the
single-process format (full trained tensors, an index-keyed optimizer state): a run sharded over N
processes resumes with any other number, and every reader of adapter checkpoints works unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch import nn

from medpeft.engine.grad_checkpoint import encoder_blocks

# segmenter methods that run parts of the model outside its forward (click rounds): FSDP must gather
# the root unit's weights around them as it does around forward
FORWARD_METHODS = ("image_embeddings", "segment")


def fsdp_plugin() -> FullyShardedDataParallelPlugin:
    """FSDP2, one unit per encoder block (the classes are filled in from the model by :func:`check_plugin`)."""
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT",
        cpu_ram_efficient_loading=False,
    )


def shard_on_cpu(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin) -> None:
    """Turn accelerate's multi-CPU (gloo) state into its FSDP state.

    accelerate enables FSDP only on accelerator devices; its FSDP2 code runs unchanged over gloo, which is
    how CPU runs (tests, debugging a config before a GPU job) shard. Set in both shared states, as
    accelerate itself does when it picks FSDP.
    """
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def is_sharded(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def check_plugin(accelerator: Accelerator, model: nn.Module) -> None:
    """FSDP2 only (FSDP1's flat parameters cannot hold frozen and trained tensors in one unit); an FSDP
    config from ``accelerate launch`` without layer classes gets the encoder's blocks."""
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version != 2:
        raise ValueError(
            f"FSDP version {plugin.fsdp_version} from the accelerate config: medpeft shards with FSDP2 "
            "(fsdp_version: 2), which keeps frozen and trained tensors apart"
        )
    if not plugin.transformer_cls_names_to_wrap:
        plugin.transformer_cls_names_to_wrap = sorted({type(m).__name__ for _, m in encoder_blocks(model)})


def register_forward_methods(model: nn.Module) -> None:
    """Let the segmenter's part methods (click rounds) gather sharded weights as ``forward`` does."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    # FSDP2 warns that the segmenter returns a view (logits sliced from the decoder's output) in case an
    # in-place op follows; none does (the 2-process test matches the 1-process gradients)
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(.*\) returned a view tensor")
    for name in FORWARD_METHODS:
        if callable(getattr(model, name, None)):
            register_fsdp_forward_method(model, name)


def optimizer_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """Each parameter group's tensor names, in the order ``optimizer.state_dict()`` numbers them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def _options(strict: bool = True) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True, strict=strict)


def trained_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full trained tensors, gathered on the main process (empty elsewhere). Every process calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    state = get_model_state_dict(model, options=_options())
    return {n: t.detach().contiguous().clone() for n, t in state.items() if n in trained}


def optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, names: list[list[str]]
) -> dict[str, Any]:
    """The full optimizer state in ``optimizer.state_dict()``'s index-keyed layout, on the main process.

    Every process calls it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=_options())
    if not state:
        return {}
    index = {n: i for i, n in enumerate(n for group in names for n in group)}
    return _rekey(state, index.__getitem__)


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], names: list[list[str]]
) -> None:
    """Shard an index-keyed optimizer state (any checkpoint's) into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    named = _rekey(state, [n for group in names for n in group].__getitem__)
    # not strict: a tensor no step has reached yet (SAM's mask encoder without mask prompts) has no state,
    # as in the single-process optimizer
    set_optimizer_state_dict(model, optimizer, named, options=_options(strict=False))


def _rekey(state: dict[str, Any], key: Callable[[Any], Any]) -> dict[str, Any]:
    """An optimizer state dict with each tensor's key (index or name) mapped through ``key``."""
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [key(p) for p in g["params"]]}
        for g in state["param_groups"]
    ]
    return {"state": {key(p): s for p, s in state["state"].items()}, "param_groups": groups}


def all_finite(params: list[torch.Tensor], accelerator: Accelerator) -> bool:
    """Whether every trained tensor is finite; sharded, each process checks its shards, then they agree."""
    bad = sum(not bool(torch.isfinite(getattr(p, "_local_tensor", p)).all()) for p in params)
    if is_sharded(accelerator):
        bad = int(accelerator.reduce(torch.tensor([float(bad)]), "sum").item())
    return bad == 0
