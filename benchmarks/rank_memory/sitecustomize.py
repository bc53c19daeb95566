"""Per-process memory of a multi-process training run, for ``scale.py`` (put this folder and ``benchmarks/``
on ``PYTHONPATH``; inert unless ``MEDPEFT_BENCH_PEAKS`` names a folder).

Each training process (``RANK`` set, or ``MEDPEFT_BENCH_SINGLE`` for a 1-process run) records, once
``Accelerator.prepare`` has placed the model (sharded under FSDP): the RSS after freed heap is handed back
("prepared"); from there, the peak up to the end of the last optimizer
step ("train"), and up to exit ("exit": it adds the checkpoint writes, where FSDP gathers the full trained
state); and the MiB of trained tensors, their gradients and optimizer moments this process holds
("trained_state"); on a GPU, its peak allocated memory up to the last optimizer step ("cuda_train"). It writes them to ``$MEDPEFT_BENCH_PEAKS/rank-<RANK>.json`` at exit.
"""

import atexit
import json
import os

_OUT = os.environ.get("MEDPEFT_BENCH_PEAKS")
if _OUT and ("RANK" in os.environ or os.environ.get("MEDPEFT_BENCH_SINGLE")):
    import accelerate
    import accelerate.optimizer
    import process_memory
    import torch

    _marks: dict[str, float] = {}
    _prepare = accelerate.Accelerator.prepare

    def _prepare_and_mark(self, *args, **kwargs):
        result = _prepare(self, *args, **kwargs)
        if any(isinstance(a, torch.nn.Module) for a in args):
            process_memory.release_free_heap()
            _marks["prepared"] = process_memory.current_rss_mib()
            process_memory.reset_peak_rss()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        return result

    _step = accelerate.optimizer.AcceleratedOptimizer.step

    def _mib(tensors) -> float:
        # a sharded (FSDP) tensor counts its local shard only
        return sum(getattr(t, "_local_tensor", t).numel() * t.element_size() for t in tensors) / 2**20

    def _step_and_mark(self, *args, **kwargs):
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grads = _mib(p.grad for p in params if p.grad is not None)
        result = _step(self, *args, **kwargs)
        _marks["train"] = process_memory.peak_rss_mib()
        if torch.cuda.is_available():  # on GPUs, the figure sharding is for
            _marks["cuda_train"] = torch.cuda.max_memory_allocated() / 2**20
        state = [
            v for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()
        ]
        # the trained tensors, their gradients and the optimizer's moments held by this process
        _marks["trained_state"] = _mib(params) + grads + _mib(state)
        return result

    def _write() -> None:
        _marks["exit"] = process_memory.peak_rss_mib()
        with open(os.path.join(_OUT, f"rank-{os.environ.get('RANK', '0')}.json"), "w") as f:
            json.dump(_marks, f)

    accelerate.Accelerator.prepare = _prepare_and_mark
    accelerate.optimizer.AcceleratedOptimizer.step = _step_and_mark
    atexit.register(_write)
