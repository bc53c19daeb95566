"""Which base weights a model was built from: recorded beside every adapter and checked when one loads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

from medpeft.backbones.hub import weights_sha256


@dataclass(frozen=True)
class BaseIdentity:
    """``source`` as the user gave it (preset, hub id, folder, checkpoint file); ``kind`` how it was read
    (preset, bundled, local, pth, hub); ``sha256`` of the loaded weights (:func:`weights_sha256`);
    ``random_init`` for presets; ``seed`` the run seed a preset was drawn with."""

    source: str
    kind: str
    image_size: int
    sha256: str
    random_init: bool
    backbone: str = "sam"
    seed: int | None = None

    @classmethod
    def of(cls, model: nn.Module, source: str, kind: str, image_size: int, backbone: str) -> BaseIdentity:
        """The identity of freshly loaded ``model``."""
        return cls(source, kind, image_size, weights_sha256(model), kind == "preset", backbone)

    def with_seed(self, seed: int) -> BaseIdentity:
        return replace(self, seed=seed)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "adapter record") -> BaseIdentity:
        """Read a recorded identity (older records lack ``backbone``: they were SAM's)."""
        missing = [k for k in ("source", "kind", "sha256") if not data.get(k)]
        if missing:
            raise ValueError(
                f"{where}: the base_model record has no {', '.join(missing)}; it cannot be verified"
            )
        return cls(
            source=str(data["source"]),
            kind=str(data["kind"]),
            image_size=int(data.get("image_size") or 0),
            sha256=str(data["sha256"]),
            random_init=bool(data.get("random_init", False)),
            backbone=str(data.get("backbone") or "sam"),
            seed=data.get("seed"),
        )
