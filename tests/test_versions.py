"""Tests of model/versions.py (the version store) and model/registry.py (the
model each project is served with)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

import model.versions as versions_module
from helpers import kill9, reaped, wait_for
from model.detector import DetectorConfig
from model.registry import ModelRegistry, load_version_model
from model.version_meta import VersionMeta
from model.versions import CheckpointError, VersionStore, check_meta, load_weights, version_name

REPO = Path(__file__).resolve().parent.parent
META = VersionMeta(labels=["car", "person"], backbone="mobilenet_v3_320_fpn")


def _weights(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3,), value), "b": torch.tensor([value])}


@pytest.fixture
def store(tmp_path) -> VersionStore:
    return VersionStore(tmp_path / "models")


class TestVersionName:
    @pytest.mark.parametrize("number, name", [(1, "v0001"), (42, "v0042"), (9999, "v9999"), (10000, "v10000")])
    def test_zero_padded(self, number, name):
        assert version_name(number) == name


class TestVersionStore:
    def test_empty_project(self, store):
        assert store.versions("1") == []
        assert store.latest("1") is None
        assert store.get("1", "v0001") is None
        assert store.projects() == []

    def test_save_names_versions_in_order(self, store):
        first = store.save("1", _weights(1.0), META)
        second = store.save("1", _weights(2.0), META)
        assert (first.name, second.name) == ("v0001", "v0002")
        assert [v.name for v in store.versions("1")] == ["v0001", "v0002"]
        assert store.latest("1").name == "v0002"
        assert store.get("1", "v0001").path == first.path

    def test_meta_is_stored_with_version_project_and_time(self, store):
        before = datetime.now(UTC).replace(microsecond=0)
        saved = store.save("7", _weights(1.0), replace(META, metrics={"map": 0.5}))
        on_disk = json.loads((saved.path / "meta.json").read_text())
        assert on_disk == saved.meta.to_json()
        assert on_disk["model_version"] == "v0001"
        assert on_disk["project"] == "7"
        assert on_disk["labels"] == ["car", "person"]
        assert on_disk["metrics"] == {"map": 0.5}
        created = datetime.fromisoformat(on_disk["created"])
        assert created.tzinfo is not None
        assert before <= created <= datetime.now(UTC) + timedelta(seconds=1)

    def test_weights_round_trip(self, store):
        saved = store.save("1", _weights(3.5), META)
        loaded = load_weights(store.get("1", saved.name))
        assert set(loaded) == {"w", "b"}
        assert torch.equal(loaded["w"], torch.full((3,), 3.5))

    def test_projects_are_separate(self, store):
        store.save("1", _weights(1.0), META)
        store.save("2", _weights(1.0), META)
        store.save("2", _weights(1.0), META)
        assert store.projects() == ["1", "2"]
        assert [v.name for v in store.versions("1")] == ["v0001"]
        assert store.latest("2").name == "v0002"

    def test_a_new_store_on_the_same_folder_sees_the_versions(self, store):
        store.save("1", _weights(1.0), META)
        assert VersionStore(store.root).latest("1").name == "v0001"

    @pytest.mark.parametrize(
        "project",
        ["", "..", "../other", "a/b", "1.2", "x" * 65, "1 2", "/abs", "\u0661\u0662", "\u00b2", "0001", "1" * 13],
    )
    def test_invalid_project_ids_are_refused(self, store, project):
        with pytest.raises(ValueError, match="invalid project id"):
            store.save(project, _weights(1.0), META)
        with pytest.raises(ValueError, match="invalid project id"):
            store.versions(project)
        with pytest.raises(ValueError, match="invalid project id"):
            store.clean_partial(project)
        assert not (store.root.parent / "other").exists()

    def test_concurrent_saves_get_distinct_names(self, store):
        names: list[str] = []
        errors: list[BaseException] = []
        start = threading.Barrier(8)

        def save(i: int) -> None:
            start.wait()
            try:
                names.append(store.save("1", _weights(float(i)), META).name)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(names) == [version_name(i) for i in range(1, 9)]
        assert len(store.versions("1")) == 8

    def test_names_keep_counting_past_v9999(self, store):
        """Name order must be creation order even when the number outgrows the padding."""
        store.save("1", _weights(1.0), META)
        (store.root / "1" / "v0001").rename(store.root / "1" / "v9999")
        assert store.save("1", _weights(2.0), META).name == "v10000"
        assert store.latest("1").name == "v10000"
        assert [v.name for v in store.versions("1")] == ["v9999", "v10000"]
        assert store.save("1", _weights(3.0), META).name == "v10001"


class TestCrashMidWrite:
    def _assert_unchanged(self, store):
        assert [v.name for v in store.versions("1")] == ["v0001"]
        assert store.latest("1").name == "v0001"
        assert torch.equal(load_weights(store.latest("1"))["w"], torch.full((3,), 1.0))

    def test_failing_weights_write(self, store, monkeypatch):
        store.save("1", _weights(1.0), META)

        def partial_save(obj, path):
            open(path, "wb").write(b"half a checkpoint")
            raise OSError("disk full")

        monkeypatch.setattr(versions_module.torch, "save", partial_save)
        with pytest.raises(OSError, match="disk full"):
            store.save("1", _weights(2.0), META)
        self._assert_unchanged(store)
        assert list((store.root / "1").glob(".tmp-*")) == []

    def test_failing_rename(self, store, monkeypatch):
        store.save("1", _weights(1.0), META)

        def failing_rename(src, dst):
            raise OSError("killed before rename")

        monkeypatch.setattr(versions_module.os, "rename", failing_rename)
        with pytest.raises(OSError, match="killed"):
            store.save("1", _weights(2.0), META)
        monkeypatch.undo()
        self._assert_unchanged(store)
        assert not (store.root / "1" / "v0002").exists()
        # the next save takes the name the failed one did not get
        assert store.save("1", _weights(2.0), META).name == "v0002"

    def test_leftover_temp_folder_is_ignored_then_cleaned(self, store):
        store.save("1", _weights(1.0), META)
        leftover = store.root / "1" / ".tmp-killed"
        leftover.mkdir()
        (leftover / "weights.pt").write_bytes(b"partial")
        (leftover / "meta.json").write_text('{"model_version": "v0002"')
        self._assert_unchanged(store)
        assert store.clean_partial("1") == 0  # it may be a save in progress
        os.utime(leftover, (time.time() - 7200, time.time() - 7200))
        assert store.clean_partial("1") == 1
        assert not leftover.exists()
        assert store.clean_partial("1") == 0
        self._assert_unchanged(store)

    def test_version_folder_without_meta_is_not_a_version(self, store):
        store.save("1", _weights(1.0), META)
        half = store.root / "1" / "v0002"
        half.mkdir()
        (half / "weights.pt").write_bytes(b"partial")
        self._assert_unchanged(store)
        assert store.get("1", "v0002") is None
        # its name stays taken: renaming a new version onto it would fail the save
        assert store.save("1", _weights(2.0), META).name == "v0003"

    @pytest.mark.parametrize("content", ['{"labels": ["car"', "[]", '{"evaluation": {}}', ""])
    def test_a_damaged_meta_costs_that_version_only(self, store, caplog, content):
        store.save("1", _weights(1.0), META)
        store.save("1", _weights(2.0), META)
        (store.root / "1" / "v0002" / "meta.json").write_text(content)
        with caplog.at_level(logging.WARNING, logger="model.versions"):
            assert [v.name for v in store.versions("1")] == ["v0001"]
            assert [v.name for v in store.versions("1")] == ["v0001"]
        warnings = [r.getMessage() for r in caplog.records if "v0002" in r.getMessage()]
        assert len(warnings) == 1 and "meta.json cannot be read" in warnings[0]  # once, not on every read
        assert store.save("1", _weights(3.0), META).name == "v0003"
        assert [v.name for v in store.versions("1")] == ["v0001", "v0003"]

    def test_clean_partial_on_a_missing_project(self, store):
        assert store.clean_partial("99") == 0


class TestCheckMeta:
    def test_matching_meta_passes(self):
        check_meta(META, ["car", "person"], "mobilenet_v3_320_fpn")

    @pytest.mark.parametrize("labels", [["car"], ["person", "car"], ["car", "person", "dog"], []])
    def test_other_labels_are_refused(self, labels):
        with pytest.raises(CheckpointError, match="labels"):
            check_meta(META, labels, "mobilenet_v3_320_fpn")

    def test_other_backbone_is_refused(self):
        with pytest.raises(CheckpointError, match="backbone"):
            check_meta(META, ["car", "person"], "resnet50_fpn_v2")

    def test_meta_without_fields_is_refused(self):
        with pytest.raises(CheckpointError):
            check_meta(VersionMeta(), ["car"], "mobilenet_v3_320_fpn")


CONFIG = DetectorConfig(backbone="mobilenet_v3_320_fpn", weights="none", allow_download=False, analysis_threshold=0.0)
LABELS = ["car", "person"]


@pytest.fixture
def registry(store) -> ModelRegistry:
    return ModelRegistry(store, CONFIG, "cpu")


def _bias(served) -> torch.Tensor:
    return served.detector.model.roi_heads.box_predictor.cls_score.bias.detach().clone()


class TestModelRegistry:
    def test_first_get_creates_v0001_with_the_project_labels(self, registry, store):
        assert registry.peek("1") is None
        served = registry.get("1", LABELS)
        assert served.name == "v0001"
        assert served.detector.labels == LABELS
        assert served.detector.model.roi_heads.box_predictor.cls_score.out_features == len(LABELS) + 1
        meta = store.latest("1").meta
        assert (meta.labels, meta.backbone, meta.weights) == (LABELS, CONFIG.backbone, "none")
        assert registry.weights_reports["1"].used == "none"
        assert registry.peek("1") is served

    def test_same_labels_return_the_same_object(self, registry, store):
        first = registry.get("1", LABELS)
        assert registry.get("1", tuple(LABELS)) is first
        assert [v.name for v in store.versions("1")] == ["v0001"]

    def test_label_change_makes_a_new_version(self, registry, store, caplog):
        first = registry.get("1", LABELS)
        with caplog.at_level(logging.WARNING, logger="model.registry"):
            second = registry.get("1", ["car", "person", "bike"])
        assert second is not first
        assert second.name == "v0002"
        assert second.detector.labels == ["car", "person", "bike"]
        assert second.detector.model.roi_heads.box_predictor.cls_score.out_features == 4
        assert store.latest("1").meta.labels == ["car", "person", "bike"]
        assert store.latest("1").meta.weights == "none"  # from base weights, not from v0001
        assert any("labels" in r.getMessage() for r in caplog.records)

    def test_a_new_registry_loads_the_saved_version(self, registry, store):
        first = registry.get("1", LABELS)
        again = ModelRegistry(store, CONFIG, "cpu").get("1", LABELS)
        assert again.name == "v0001"
        assert torch.equal(_bias(again), _bias(first))
        assert len(store.versions("1")) == 1

    def test_reload_swaps_only_when_asked(self, registry, store):
        served = registry.get("1", LABELS)
        assert registry.reload("1") is served  # nothing newer
        state = served.detector.model.state_dict()
        state = {k: v.clone() for k, v in state.items()}
        state["roi_heads.box_predictor.cls_score.bias"] += 1.0
        VersionStore(store.root).save("1", state, replace(served.version.meta, parent="v0001"))  # another process
        assert registry.peek("1") is served
        reloaded = registry.reload("1")
        assert reloaded.name == "v0002"
        assert registry.peek("1") is reloaded
        assert torch.allclose(_bias(reloaded), _bias(served) + 1.0)
        assert registry.get("1", LABELS) is reloaded

    def test_checkpoint_of_another_backbone_is_replaced(self, registry, store):
        store.save("1", {"w": torch.zeros(1)}, VersionMeta(labels=LABELS, backbone="resnet50_fpn_v2"))
        served = registry.get("1", LABELS)
        assert served.name == "v0002"
        assert store.latest("1").meta.backbone == CONFIG.backbone

    def test_a_newer_version_of_another_backbone_is_never_loaded(self, store, caplog):
        """Another process (BACKBONE=auto on a GPU worker) wrote it: this one keeps serving its own."""
        registry = ModelRegistry(store, CONFIG, "cpu", refresh_every=0.0)
        served = registry.get("1", LABELS)
        VersionStore(store.root).save(
            "1", {"w": torch.zeros(1)}, VersionMeta(labels=LABELS, backbone="resnet50_fpn_v2")
        )
        assert registry.get("1", LABELS) is served
        with caplog.at_level(logging.WARNING, logger="model.registry"):
            assert registry.reload("1") is served
        assert any("resnet50_fpn_v2" in r.getMessage() for r in caplog.records)


class TestLoadVersionModel:
    def test_refuses_weights_of_another_backbone(self, store):
        version = store.save("1", {"w": torch.zeros(1)}, VersionMeta(labels=LABELS, backbone="resnet50_fpn_v2"))
        with pytest.raises(CheckpointError, match="resnet50_fpn_v2"):
            load_version_model(CONFIG, version)

    def test_loads_a_version_of_its_own_backbone(self, registry, store):
        served = registry.get("1", LABELS)
        model = load_version_model(CONFIG, store.latest("1"))
        assert torch.equal(model.roi_heads.box_predictor.cls_score.bias, _bias(served))


@pytest.mark.slow
def test_first_calls_in_several_processes_make_one_version(tmp_path):
    """Gunicorn workers that get their first /predict at once: one base version, served by all."""
    script = f"""
import pathlib, sys, time, torch
from model.detector import DetectorConfig
from model.registry import ModelRegistry
from model.versions import VersionStore
config = DetectorConfig(backbone="mobilenet_v3_320_fpn", weights="none", allow_download=False, analysis_threshold=0.0)
registry = ModelRegistry(VersionStore({str(tmp_path)!r}), config, "cpu")
print("ready", flush=True)
while not pathlib.Path({str(tmp_path / "go")!r}).exists():
    time.sleep(0.01)
print(registry.get("1", ["car", "person"]).name, flush=True)
"""
    repo = Path(__file__).resolve().parent.parent
    procs = [
        subprocess.Popen([sys.executable, "-c", script], cwd=repo, stdout=subprocess.PIPE, text=True) for _ in range(3)
    ]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 3
        (tmp_path / "go").touch()
        assert [p.communicate(timeout=300)[0].strip() for p in procs] == ["v0001"] * 3
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [v.name for v in VersionStore(tmp_path).versions("1")] == ["v0001"]


class TestPruning:
    @staticmethod
    def _save(store, labels, parent=None) -> str:
        return store.save("1", _weights(1.0), VersionMeta(labels=labels, backbone=CONFIG.backbone, parent=parent)).name

    def test_old_versions_go_but_each_label_sets_newest_and_its_parent_stay(self, tmp_path):
        store = VersionStore(tmp_path, keep=2)
        a1 = self._save(store, ["car"])
        a2 = self._save(store, ["car"], parent=a1)  # the newest for ["car"]: what a switch back serves
        b = [self._save(store, ["car", "bike"], parent=a2)]
        for _ in range(3):
            b.append(self._save(store, ["car", "bike"], parent=b[-1]))
        assert [v.name for v in store.versions("1")] == [a1, a2, b[-2], b[-1]]

    def test_keep_zero_keeps_everything(self, tmp_path):
        store = VersionStore(tmp_path)
        names = [self._save(store, ["car"]) for _ in range(4)]
        assert [v.name for v in store.versions("1")] == names


class TestLineageByLabelSet:
    def _trained(self, store, registry) -> str:
        """A version as a training writes it: for LABELS, with annotation ids, weights moved off the base."""
        base = registry.get("1", LABELS)
        state = {
            k: v + 0.5 if k.endswith("cls_score.weight") else v for k, v in base.detector.model.state_dict().items()
        }
        meta = VersionMeta(labels=LABELS, backbone=CONFIG.backbone, parent=base.name, annotation_ids=[1])
        return store.save("1", state, meta).name

    def test_new_labels_warm_start_from_the_trained_version(self, registry, store):
        trained = self._trained(store, registry)
        trained_rows = load_weights(store.get("1", trained))["roi_heads.box_predictor.cls_score.weight"]
        served = registry.get("1", ["person", "bike", "car"])
        assert served.version.meta.parent == trained and "warm start" in served.version.meta.weights
        rows = served.detector.model.roi_heads.box_predictor.cls_score.weight.detach()
        assert torch.equal(rows[1], trained_rows[2]) and torch.equal(rows[3], trained_rows[1])  # person, car kept

    def test_switching_back_finds_the_trained_version(self, registry, store):
        trained = self._trained(store, registry)
        registry.get("1", ["car"])
        count = len(store.versions("1"))
        assert registry.get("1", LABELS).name == trained
        assert len(store.versions("1")) == count  # no new untrained version for the old labels

    def test_a_new_project_starts_from_base_weights(self, registry, store):
        assert registry.get("2", ["car"]).version.meta.parent is None


# --------------------------------------------------------------------------------------
# a version write killed halfway (a real process, killed with SIGKILL)


_SAVE_SCRIPT = """
import os, pathlib, sys, time
import torch
import model.versions as versions
from model.version_meta import VersionMeta

root, stage, marker = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
real_save = torch.save

def stall():
    marker.touch()
    time.sleep(600)

if stage == "weights":  # killed while torch.save is writing the weights file
    def partial_save(obj, path):
        real_save(obj, path)
        with open(path, "r+b") as f:  # as if only the first half had reached the disk yet
            f.truncate(os.path.getsize(path) // 2)
        stall()
    versions.torch.save = partial_save
else:  # killed after the weights, while writing meta.json (before the rename)
    real_write = versions._write_json
    def write_then_stall(path, data):
        real_write(path, data)
        stall()
    versions._write_json = write_then_stall

state = {f"layer{i}.weight": torch.randn(1024, 1024) for i in range(48)}  # ~200 MB
versions.VersionStore(root).save("3", state, VersionMeta(labels=["car"]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["weights", "meta"])
def test_a_killed_save_leaves_no_version(tmp_path, stage):
    store = VersionStore(tmp_path / "models")
    first = store.save("3", {"w": torch.ones(2)}, VersionMeta(labels=["car"]))
    marker = tmp_path / "stalled"
    writer = subprocess.Popen(
        [sys.executable, "-c", _SAVE_SCRIPT, str(store.root), stage, str(marker)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    with reaped(writer) as proc:
        wait_for(lambda: marker.exists() or proc.poll() is not None, 120, "the save to start", interval=0.05)
        assert proc.poll() is None, f"the writer exited with {proc.returncode} before it was killed"
        partial = list((store.root / "3").glob(".tmp-*"))
        assert len(partial) == 1 and (partial[0] / "weights.pt").is_file()
        kill9(proc)
    assert [v.name for v in store.versions("3")] == ["v0001"]
    assert store.latest("3") == first
    assert store.projects() == ["3"]
    nxt = store.save("3", {"w": torch.zeros(2)}, VersionMeta(labels=["car"]))  # cleans up first: its writer is dead
    assert nxt.name == "v0002"
    assert not list((store.root / "3").glob(".tmp-*")), "the killed save's folder waits for its hour"
