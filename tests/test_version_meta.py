"""Tests of model/version_meta.py: what a version's meta.json holds, read and written in one place."""

from __future__ import annotations

import pytest

from model.evaluate import Prequential
from model.owners import ProcessOwner
from model.version_meta import VersionMeta

WRITER = {"pid": 4242, "host": "worker-1", "started": "boot/123"}
# meta.json as a training of this release writes it (the store's four keys included)
TRAINED = {
    "labels": ["car", "person"],
    "backbone": "mobilenet_v3_320_fpn",
    "weights": "v0001",
    "parent": "v0001",
    "annotation_ids": [101, 102],
    "annotation_updated": {"101": "2025-02-01T00:00:00Z"},
    "task_ids": [1, 2],
    "skipped": {},
    "evaluation": Prequential("v0001", "too_few", "1 task", tasks=1, min_tasks=5).to_json(),
    "metrics": {},
    "epoch_losses": [{"steps": 2.0, "total": 1.5}],
    "loss_summary": {"iterations": 2.0},
    "held_out": [],
    "train_config": {"epochs": 8, "lr_drops": []},
    "loss": {"kind": "synchronic"},
    "model_version": "v0002",
    "project": "3",
    "created": "2026-12-01T10:00:00+00:00",
    "writer": WRITER,
}
# as the registry writes a version made from base weights
BASE = {
    "labels": ["car"],
    "backbone": "mobilenet_v3_320_fpn",
    "weights": "coco",
    "weights_requested": "coco",
    "parent": None,
    "model_version": "v0001",
    "project": "3",
    "created": "2026-12-01T09:00:00+00:00",
    "writer": WRITER,
}


class TestRoundTrip:
    @pytest.mark.parametrize("data", [TRAINED, BASE], ids=["trained", "base"])
    def test_the_file_is_written_back_as_it_was_read(self, data):
        assert VersionMeta.from_json(data).to_json() == data

    def test_fields_are_typed(self):
        meta = VersionMeta.from_json(TRAINED)
        assert meta.evaluation == Prequential.from_json(TRAINED["evaluation"])
        assert meta.writer == ProcessOwner(4242, "worker-1", "boot/123")
        assert meta.trained and not VersionMeta.from_json(BASE).trained

    def test_unknown_keys_are_kept(self):
        data = {**BASE, "note": {"by": "an older release"}}
        meta = VersionMeta.from_json(data)
        assert meta.extra == {"note": {"by": "an older release"}} and meta.to_json() == data


class TestMissingFields:
    def test_an_old_file_loads_with_what_it_has(self):
        meta = VersionMeta.from_json({"labels": ["car"]})
        assert (meta.labels, meta.backbone, meta.parent, meta.evaluation, meta.writer) == (
            ["car"],
            None,
            None,
            None,
            None,
        )
        assert not meta.trained

    @pytest.mark.parametrize("data", [[], "v0001", {"evaluation": {}}, {"evaluation": 7}])
    def test_a_damaged_file_is_one_error(self, data):
        """ValueError whatever the damage: readers skip (the store) or refuse (WEIGHTS) on it."""
        with pytest.raises(ValueError):
            VersionMeta.from_json(data)

    def test_absent_values_are_left_out_but_parent_is_written(self):
        """As the writers always did: null ``parent`` means base weights, which a reader looks for."""
        assert VersionMeta(labels=["car"], backbone="b", weights="none").to_json() == {
            "labels": ["car"],
            "backbone": "b",
            "weights": "none",
            "parent": None,
        }
