"""Cached image embeddings: decoder-only training encodes each image once and follows the same losses;
anything that trains up to the encoder, or augmentation, turns the cache off with a reason."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import make_shapes_dataset, tiny_config_dict
from medpeft.backbones.sam.segmenter import SamSegmenter
from medpeft.config import parse_config
from medpeft.engine.trainer import train

OFF = {"hflip_p": 0.0, "brightness_p": 0.0, "contrast_p": 0.0}


def _cfg(data: Path, out: Path, adapters: list, augment: dict | None = None, **train_keys):
    raw = tiny_config_dict(data, out, epochs=3, batch_size=4, **train_keys)
    raw["adapters"] = adapters
    raw["data"]["augment"] = OFF if augment is None else augment
    return parse_config(raw)


def _losses(run: Path) -> list[float]:
    return [float(r["loss"]) for r in csv.DictReader((run / "log.csv").open()) if r.get("loss")]


@pytest.fixture
def encoder_calls(monkeypatch):
    calls = {"images": 0}
    original = SamSegmenter.image_embeddings

    def counted(self, images):
        calls["images"] += images.shape[0]
        return original(self, images)

    monkeypatch.setattr(SamSegmenter, "image_embeddings", counted)
    return calls


def test_decoder_training_encodes_each_image_once(tmp_path: Path, encoder_calls, capsys) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", n=10)
    cached = train(_cfg(data, tmp_path / "cached", [{"name": "decoder"}]), progress=False)
    assert "image embeddings cached in memory" in capsys.readouterr().out
    n_train = 6  # 60% of 10 images
    training_calls = encoder_calls["images"]
    encoder_calls["images"] = 0
    plain = train(
        _cfg(data, tmp_path / "plain", [{"name": "decoder"}], embedding_cache="off"), progress=False
    )
    assert "recomputed every step" in capsys.readouterr().out
    # 3 epochs: the plain run encodes the 6 training images every epoch, the cached one once (+ one probe
    # image that checks nothing up to the encoder trains); validation encodes the same in both
    validation = encoder_calls["images"] - 3 * n_train
    assert validation >= 0 and training_calls == 1 + n_train + validation
    a, b = _losses(cached.run_dir), _losses(plain.run_dir)
    assert len(a) == len(b) >= 3
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4, (a, b)


def test_disk_cache_is_reused_and_keyed_by_preprocessing(tmp_path: Path, encoder_calls) -> None:
    from medpeft.engine.embedding_cache import cache_root

    data = make_shapes_dataset(tmp_path / "shapes", n=10)
    train(_cfg(data, tmp_path / "one", [{"name": "decoder"}], embedding_cache="disk"), progress=False)
    files = sorted(cache_root().glob("*.safetensors"))
    assert len(files) >= 6
    encoder_calls["images"] = 0
    cfg = _cfg(data, tmp_path / "two", [{"name": "decoder"}], embedding_cache="disk")
    from medpeft.engine import trainer

    seen = {}
    original = trainer.EmbeddingCache.embeddings

    def spy(self, model, batch):
        seen["cache"] = self
        return original(self, model, batch)

    trainer.EmbeddingCache.embeddings = spy
    try:
        train(cfg, progress=False)
        assert seen["cache"].computed == 0  # every training image came from disk
        cfg.data.normalize = "minmax"  # other preprocessing: other keys, computed again
        cfg.train.output_dir = tmp_path / "three"
        train(cfg, progress=False)
        assert seen["cache"].computed == 6
    finally:
        trainer.EmbeddingCache.embeddings = original


@pytest.mark.parametrize(
    ("adapters", "augment", "reason"),
    [
        ([{"name": "lora", "r": 2}, {"name": "decoder"}], None, "image encoder"),
        ([{"name": "decoder"}], {"hflip_p": 0.5}, "hflip_p"),
    ],
)
def test_no_cache_when_the_encoder_trains_or_images_change(tmp_path: Path, adapters, augment, reason) -> None:
    from medpeft.engine.build import build_model
    from medpeft.engine.embedding_cache import cache_mode

    data = make_shapes_dataset(tmp_path / "shapes", n=4)
    cfg = _cfg(data, tmp_path / "run", adapters, augment)
    model, _ = build_model(cfg, ["disc", "square"])
    assert cache_mode(cfg, model) == ("off", "")
    cfg.train.embedding_cache = "memory"  # asked for explicitly: one line saying why not
    with pytest.raises(ValueError, match=reason):
        cache_mode(cfg, model)
    assert not any(p.grad is not None for p in model.parameters())
    assert torch.is_grad_enabled()
