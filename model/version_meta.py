"""What a version's ``meta.json`` holds: the one place that knows its fields.

A version is made in one of three ways, and each fills its own fields:

- from base weights or a warm start (``model.registry``): what it is;
- by a training job: also what it was trained on, how, and the figures of
  the version it replaces;
- by the active-learning benchmark's pretraining: also ``pretraining``.

The store adds who published it and when. A field a version has no value for
is left out of the file, as the writers always did, except ``parent``, which
says "made from base weights" when it is null. Keys this class does not know
(a file written by another release) are kept in ``extra`` and written back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from model.evaluate import Prequential
from model.owners import ProcessOwner

_WRITTEN_WHEN_NONE = frozenset({"parent"})


@dataclass(frozen=True)
class VersionMeta:
    """A version's metadata.

    Attributes:
        labels (list[str]): the classes of its box head, in order (class 1 first).
        backbone (str | None): the architecture its weights belong to (BACKBONE).
        weights (str | None): where its weights came from: a base-weights source,
            ``<version> (warm start)``, or the version a training started from.
        weights_requested (str | None): the WEIGHTS asked for (differs from
            ``weights`` when they fell back).
        parent (str | None): the version it was made from; None for base weights.
        annotation_ids, annotation_updated, task_ids, skipped: a training's data:
            the annotations (and their update times), their tasks, and the number
            of tasks skipped per reason. ``annotation_ids`` is None for a version
            no training made.
        evaluation (Prequential | None): the figures of the version it replaced,
            measured when its training started.
        metrics, epoch_losses, loss_summary, held_out: what the training
            reported (``model.train.TrainResult``).
        train_config, loss (dict | None): the training's settings and its loss, as JSON.
        pretraining (dict | None): the active-learning benchmark's warm start: how it was made.
        model_version, project, created, writer: set by the store when it publishes the version.
        extra (dict): keys of the file this class does not know, kept as they were.
    """

    labels: list[str] = field(default_factory=list)
    backbone: str | None = None
    weights: str | None = None
    weights_requested: str | None = None
    parent: str | None = None
    annotation_ids: list[int] | None = None
    annotation_updated: dict[str, str] | None = None
    task_ids: list[int] | None = None
    skipped: dict[str, int] | None = None
    evaluation: Prequential | None = None
    metrics: dict[str, float] | None = None
    epoch_losses: list[dict[str, float]] | None = None
    loss_summary: dict[str, float] | None = None
    held_out: list[str] | None = None
    train_config: dict | None = None
    loss: dict | None = None
    pretraining: dict | None = None
    model_version: str | None = None
    project: str | None = None
    created: str | None = None
    writer: ProcessOwner | None = None
    extra: dict = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        """Made by a training (it records what it was trained on), not from base weights or a warm start."""
        return self.annotation_ids is not None

    def to_json(self) -> dict:
        """The content of ``meta.json``."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        data["evaluation"] = self.evaluation.to_json() if self.evaluation else None
        data["writer"] = self.writer.to_json() if self.writer else None
        known = {k: v for k, v in data.items() if v is not None or k in _WRITTEN_WHEN_NONE}
        return {**self.extra, **known}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> VersionMeta:
        """A ``meta.json``'s content; any field may be missing (files of older releases).

        Raises:
            ValueError: ``data`` is not a version's meta (not an object, or a
                field of the wrong shape): one error for every damage, so that a
                reader can skip or refuse the version.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a version's meta is a JSON object, not {type(data).__name__}")
        names = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in names}
        try:
            if values.get("evaluation") is not None:
                values["evaluation"] = Prequential.from_json(values["evaluation"])
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"its evaluation is not one: {exc}") from exc
        if values.get("writer") is not None:
            values["writer"] = ProcessOwner.from_json(values["writer"])
        return cls(**values, extra={k: v for k, v in data.items() if k not in names})
