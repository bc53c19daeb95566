"""GaLore / SRFT-GaLore through the engine: training, resume, checkpoints, state report, config errors.

Tiny SAM (``sam-tiny`` at 64 px) fully fine-tuned, with GaLore (rank 8) on the image encoder's
attention ``qkv`` / ``proj`` weights and plain AdamW on everything else.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_shapes_dataset, tiny_config_dict, train_killed_at_loss_call
from medpeft.config import Config, ConfigError, load_config, parse_config
from medpeft.engine import checkpoint as ckpt
from medpeft.engine.build import build_model, build_optimizer
from medpeft.engine.report import optimizer_report
from medpeft.engine.trainer import train
from medpeft.optim import GaLoreAdamW, build_galore_param_groups

ATTN = r"vision_encoder\.layers\.\d+\.attn\.(qkv|proj)\.weight$"
RANK = 8
LABELS = ["disc", "square"]
CONFIG_FILE = Path(__file__).resolve().parents[2] / "configs" / "galore_srft.yaml"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """One intra-op thread: these tiny models gain nothing from more, and a shared CPU loses a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def big_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shapes with large objects: a tiny random-init SAM learns them within a dozen steps."""
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", big=True)


def _cfg(root: Path, out: Path, projector: str = "srft", update_gap: int = 5, **train_kw: Any) -> Config:
    """Full fine-tuning of tiny SAM, GaLore on the encoder attention weights; box prompts, no augmentation."""
    d = tiny_config_dict(root, out, **{"lr": 1e-2, "schedule": "constant", **train_kw})
    d["adapters"] = [{"name": "full"}]
    d["prompts"] = {"train_modes": {"box": 1.0}}
    d["data"]["augment"] = {"hflip_p": 0.0, "brightness_p": 0.0, "contrast_p": 0.0}
    d["optimizer"] = {
        "name": "galore_adamw",
        "projector": projector,
        "rank": RANK,
        "update_gap": update_gap,
        "targets": [ATTN],
    }
    return parse_config(d)


def _losses(history: list[dict[str, float]]) -> list[tuple[int, float]]:
    return [(int(h["step"]), h["loss"]) for h in history if "loss" in h]


def _galore_states(optimizer_state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Saved state of every GaLore-projected parameter, keyed by parameter name."""
    out = {}
    for group in optimizer_state["param_groups"]:
        if group.get("galore"):
            for pid, name in zip(group["params"], group["param_names"], strict=True):
                out[name] = optimizer_state["state"][pid]
    return out


def _expected_state_numel(model: torch.nn.Module, only: set[str] | None = None) -> tuple[int, int]:
    """(GaLore, AdamW) state numbers from the shapes alone (of the parameters named in ``only``, if given).

    A covered ``[m, n]`` matrix keeps two moments of ``r x max(m, n)`` (projection on the smaller
    side) and a ``min(m, n) x r`` basis; every other trainable tensor keeps two full-size moments.
    """
    galore = adamw = 0
    for name, p in model.named_parameters():
        if not p.requires_grad or (only is not None and name not in only):
            continue
        adamw += 2 * p.numel()
        if re.search(ATTN, name):
            m, n = p.shape
            r = min(RANK, m, n)
            galore += 2 * r * max(m, n) + min(m, n) * r
        else:
            galore += 2 * p.numel()
    return galore, adamw


@pytest.mark.parametrize("projector", ["svd", "srft", "gaussian"])
def test_galore_training_converges(projector: str, big_shapes: Path, tmp_path: Path) -> None:
    cfg = _cfg(big_shapes, tmp_path / "run", projector, epochs=3)
    result = train(cfg, progress=False)
    losses = [v for _, v in _losses(result.history)]
    assert len(losses) == 12
    # measured: 1.51 -> 1.12 with every projector; step-to-step noise is about 0.04
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:2]) / 2

    # GaLore really ran on the covered weights: rank-r moments, refreshed bases, weights moved
    last = ckpt.resolve_pointer(result.run_dir, "last")
    galore = _galore_states(ckpt.load_training_state(last)["optimizer"])
    init, _ = build_model(cfg, LABELS)
    params = {n: p for n, p in init.named_parameters() if re.search(ATTN, n)}
    assert set(galore) == set(params) and len(params) == 4
    tensors = load_file(str(last / ckpt.ADAPTER_FILE))
    for name, st in galore.items():
        m, n = params[name].shape
        assert st["exp_avg"].shape == ((RANK, n) if m <= n else (m, RANK))
        assert int(st["proj_step"]) == 10  # refreshed at steps 0, 5, 10
        assert (tensors[name] - params[name].detach()).abs().max() > 1e-3


@pytest.mark.parametrize("projector", ["svd", "srft", "gaussian"])
def test_resume_after_kill_matches_uninterrupted_run(
    projector: str, big_shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # refreshes at steps 0, 4, 8; killed during step 6 -> resumes at 5 from the step-4 bases, refreshes at 8
    full = train(
        _cfg(big_shapes, tmp_path / "full", projector, update_gap=4, epochs=3, checkpoint_every=1),
        progress=False,
    )

    cfg = _cfg(big_shapes, tmp_path / "killed", projector, update_gap=4, epochs=3, checkpoint_every=1)
    train_killed_at_loss_call(cfg, 6, monkeypatch)
    last = ckpt.resolve_pointer(cfg.train.output_dir, "last")
    assert last is not None and last.name == "step-000005"
    saved = _galore_states(ckpt.load_training_state(last)["optimizer"])
    assert {int(s["proj_step"]) for s in saved.values()} == {4}

    resumed = train(cfg, resume=True, progress=False)
    a, b = _losses(full.history), _losses(resumed.history)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 13))
    assert [v for _, v in b] == pytest.approx([v for _, v in a], rel=1e-6, abs=1e-7)
    ends = [
        _galore_states(ckpt.load_training_state(ckpt.resolve_pointer(r.run_dir, "last"))["optimizer"])
        for r in (full, resumed)
    ]
    for name, st in ends[0].items():
        assert int(st["proj_step"]) == int(ends[1][name]["proj_step"]) == 8
        torch.testing.assert_close(ends[1][name]["proj"], st["proj"], rtol=1e-6, atol=1e-7)


def test_training_state_loads_weights_only_with_projectors(big_shapes: Path, tmp_path: Path) -> None:
    cfg = _cfg(big_shapes, tmp_path / "run", "srft", update_gap=2, epochs=1, max_steps=3)
    result = train(cfg, progress=False)
    path = ckpt.resolve_pointer(result.run_dir, "last") / ckpt.STATE_FILE
    state = torch.load(path, map_location="cpu", weights_only=True)
    opt = state["optimizer"]
    galore = _galore_states(opt)
    model, _ = build_model(cfg, LABELS)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert len(galore) == 4
    for name, st in galore.items():
        m, n = shapes[name]
        basis = st["proj"]
        assert isinstance(basis, torch.Tensor) and basis.shape == (min(m, n), RANK)
        torch.testing.assert_close(basis.T @ basis, torch.eye(RANK), atol=1e-5, rtol=0)
        assert int(st["proj_side"]) == (0 if m <= n else 1) and int(st["proj_step"]) == 2
    covered = {pid for g in opt["param_groups"] if g.get("galore") for pid in g["params"]}
    plain = [st for pid, st in opt["state"].items() if pid not in covered]
    assert plain and all("proj" not in st for st in plain)
    [group] = [g for g in opt["param_groups"] if g.get("galore")]
    assert (group["projector"], group["rank"], group["update_gap"]) == ("srft", RANK, 2)
    # the state actually held equals the size predicted from the shapes (of the tensors that got gradients)
    names = {
        pid: n for g in opt["param_groups"] for pid, n in zip(g["params"], g["param_names"], strict=True)
    }
    held = sum(v.numel() for st in opt["state"].values() for v in st.values() if isinstance(v, torch.Tensor))
    assert held == _expected_state_numel(model, {names[pid] for pid in opt["state"]})[0]


def test_optimizer_report_galore_state_is_smaller_than_adamw(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tmp_path / "run")
    model, _ = build_model(cfg, LABELS)
    galore, adamw = _expected_state_numel(model)
    line = optimizer_report(model, cfg)
    assert f"state {galore:,} numbers vs AdamW {adamw:,}" in line
    assert "projector srft, rank 8" in line
    # by hand: two qkv [96, 32] and two proj [32, 32] covered at rank 8
    covered_galore = 2 * (2 * 8 * 96 + 32 * 8) + 2 * (2 * 8 * 32 + 32 * 8)
    covered_adamw = 2 * (2 * 96 * 32) + 2 * (2 * 32 * 32)
    assert (covered_galore, covered_adamw) == (5120, 16384)
    assert adamw - galore == covered_adamw - covered_galore

    adamw_cfg = cfg.model_copy(deep=True)
    adamw_cfg.optimizer.name = "adamw"
    assert f"state {adamw:,} numbers vs AdamW {adamw:,} (100.0%)" in optimizer_report(model, adamw_cfg)


def test_targets_matching_nothing_is_a_config_error(big_shapes: Path, tmp_path: Path) -> None:
    cfg = _cfg(big_shapes, tmp_path / "run")
    cfg.optimizer.targets = [r"mlp\.no_such_layer\.weight$"]
    with (
        pytest.warns(UserWarning, match="matches no trainable matrix"),
        pytest.raises(
            ConfigError, match=r"optimizer.targets .*no_such_layer.* match no trainable weight matrix"
        ),
    ):
        train(cfg, progress=False)

    # the default targets name the encoder's base weights, which LoRA leaves frozen
    d = tiny_config_dict(big_shapes, tmp_path / "lora")
    d["optimizer"] = {"name": "galore_adamw"}
    lora_cfg = parse_config(d)
    model, _ = build_model(lora_cfg, LABELS)
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match="match no trainable weight matrix"):
        optimizer_report(model, lora_cfg)


@pytest.mark.parametrize("projector", ["srft", "gaussian"])
def test_two_processes_derive_identical_projectors(projector: str, tmp_path: Path) -> None:
    """Two ranks of a data-parallel run: same seed and names, different global RNG and parameter order."""
    cfg = _cfg(tmp_path, tmp_path / "run", projector, update_gap=2)
    gen = torch.Generator().manual_seed(0)
    model_a, _ = build_model(cfg, LABELS)
    names = [n for n, _ in model_a.named_parameters() if re.search(ATTN, n)]
    # three steps of the same (all-reduced) gradients; both qkv layers get the same one
    qkv = [n for n in names if ".qkv." in n]
    grads = []
    for _ in range(3):
        g = {n: torch.randn(dict(model_a.named_parameters())[n].shape, generator=gen) for n in names}
        g[qkv[1]] = g[qkv[0]].clone()
        grads.append(g)

    def run(
        optimizer: torch.optim.Optimizer, model: torch.nn.Module, rng_seed: int
    ) -> list[dict[str, torch.Tensor]]:
        torch.manual_seed(rng_seed)
        params = dict(model.named_parameters())
        bases = []
        for g in grads:
            for n, p in params.items():
                p.grad = g[n].clone() if n in g else None
            optimizer.step()
            bases.append({n: optimizer.state[params[n]]["proj"].clone() for n in names})
        return bases

    rank0 = run(build_optimizer(cfg, model_a), model_a, rng_seed=1)
    model_b, _ = build_model(cfg, LABELS)
    trainable = [(n, p) for n, p in model_b.named_parameters() if p.requires_grad]
    groups = build_galore_param_groups(
        reversed(trainable),
        [ATTN],
        rank=RANK,
        update_gap=2,
        projector=projector,
        seed=cfg.train.seed,
        weight_decay=cfg.train.weight_decay,
    )
    rank1 = run(GaLoreAdamW(groups, lr=cfg.train.lr), model_b, rng_seed=12345)

    for a, b in zip(rank0, rank1, strict=True):
        for n in names:
            assert torch.equal(a[n], b[n]), n
    assert not torch.equal(rank0[2][qkv[0]], rank0[1][qkv[0]])  # refreshed at step 2
    assert not torch.equal(rank0[0][qkv[0]], rank0[0][qkv[1]])  # seeded by name, not shared
    params_a, params_b = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    for n in names:
        assert torch.equal(params_a[n], params_b[n])


def test_shipped_config_projects_exactly_the_attention_weights() -> None:
    cfg = load_config(CONFIG_FILE, ["model.base=sam-tiny", "model.image_size=64"])
    opt = cfg.optimizer
    assert (opt.name, opt.projector, opt.rank, opt.update_gap, opt.scale) == (
        "galore_adamw",
        "srft",
        128,
        200,
        0.25,
    )
    model, _ = build_model(cfg, LABELS)
    optimizer = build_optimizer(cfg, model)
    covered = sorted(n for g in optimizer.param_groups if g["galore"] for n in g["param_names"])
    assert covered == sorted(n for n, _ in model.named_parameters() if re.search(ATTN, n))
    assert len(covered) == 4
    if not any(a.get("name") == "full" for a in cfg.adapters):
        # with an adapter that unfreezes exactly the attention weights: nothing else of the encoder trains
        encoder = sorted(n for n, p in model.named_parameters() if p.requires_grad and "vision_encoder." in n)
        assert encoder == covered
