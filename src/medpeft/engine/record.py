"""The JSON record beside every adapter file (``adapter.json``), as one typed object.

It says what the adapter needs to be rebuilt bit for bit (base identity, backbone, task, methods, the
whole config, labels, input size), where training was (step, epoch, validation score), and the
SHA-256 of every file of the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from medpeft import __version__
from medpeft.backbones.identity import BaseIdentity

FORMAT = "medpeft-adapter"
REQUIRED = ("format", "base_model", "label_names", "config", "files", "step", "epoch")


class RecordError(ValueError):
    """A record is incomplete or was edited; the message names the file and the key."""


@dataclass(frozen=True)
class AdapterRecord:
    """``depth_model``: the identity of a depth-guided model's Depth Anything weights (checked like
    ``base_model``). ``scores``: the validation score(s) at this checkpoint (``val_dice`` or ``val_abs_rel``: None when
    not validated), stored as top-level keys; ``parameters``: trainable and total counts; ``trainable``:
    the shape of every saved tensor; ``files``: SHA-256 per file (filled when written)."""

    base_model: BaseIdentity
    label_names: list[str]
    config: dict[str, Any]
    methods: list[dict[str, Any]] = field(default_factory=list)
    backbone: str = "sam"
    task: str = "segmentation"
    image_size: int = 0
    class_prompt: str = "none"
    step: int = 0
    epoch: int = 0
    scores: dict[str, float | None] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)
    trainable: dict[str, list[int]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    medpeft_version: str = __version__
    depth_model: BaseIdentity | None = None  # a depth-guided model's Depth Anything weights

    def at(self, step: int, epoch: int, **scores: float | None) -> AdapterRecord:
        """This record for the checkpoint of ``step`` (end of ``epoch``), with its validation scores."""
        return replace(self, step=step, epoch=epoch, scores=dict(scores))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "medpeft_version": self.medpeft_version}
        out.update(
            base_model=self.base_model.to_json(),
            backbone=self.backbone,
            task=self.task,
            methods=self.methods,
            image_size=self.image_size,
            label_names=self.label_names,
            class_prompt=self.class_prompt,
            config=self.config,
            step=self.step,
            epoch=self.epoch,
            parameters=self.parameters,
            trainable=self.trainable,
            files=self.files,
        )
        if self.depth_model is not None:
            out["depth_model"] = self.depth_model.to_json()
        out.update(self.scores)
        return out

    @classmethod
    def from_json(cls, data: Any, where: str) -> AdapterRecord:
        """Read a record written by this or an older medpeft (older ones were SAM segmentation records)."""
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise RecordError(
                f"{where} is not a complete medpeft checkpoint record: missing {', '.join(missing)} "
                "(written by an older medpeft, or edited)"
            )
        base = data["base_model"]
        if not isinstance(base, Mapping) or not base.get("sha256"):
            raise RecordError(
                f"{where}: base_model has no weights hash (sha256), so the base it needs cannot be verified"
            )
        if not isinstance(data["files"], Mapping):
            raise RecordError(f"{where}: 'files' must map file names to SHA-256 hashes")
        config = data["config"] if isinstance(data["config"], Mapping) else {}
        return cls(
            base_model=BaseIdentity.from_json(base, where),
            label_names=list(data["label_names"]),
            config=dict(config),
            methods=list(data.get("methods", [])),
            backbone=str(data.get("backbone") or base.get("backbone") or "sam"),
            task=str(data.get("task") or "segmentation"),
            image_size=int(data.get("image_size") or config.get("model", {}).get("image_size") or 0),
            class_prompt=str(data.get("class_prompt", "none")),
            step=int(data["step"]),
            epoch=int(data["epoch"]),
            scores={k: v for k, v in data.items() if k.startswith("val_")},
            parameters=dict(data.get("parameters") or {}),
            trainable=dict(data.get("trainable") or {}),
            files=dict(data["files"]),
            medpeft_version=str(data.get("medpeft_version", "")),
            depth_model=BaseIdentity.from_json(data["depth_model"], where)
            if data.get("depth_model")
            else None,
        )
