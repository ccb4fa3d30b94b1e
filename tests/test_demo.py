"""``make demo``'s parts that need no server: its scene project, its annotator's choice of tasks and its wait on /jobs.

The demo itself (Label Studio, the backend, four trainings: 15 to 20 minutes) is not run here.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import parse_qs, urlparse

import pytest

import demo.annotator
from backend.annotations import annotation_boxes
from backend.labels import parse_label_config
from demo.annotator import QUEUE_TITLE, DemoError, queue_head, wait_for_jobs
from demo.scenes import LABEL_CONFIG, LABELS, SCENES, write_scenes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("document-root")
    return root, write_scenes(root, "scenes", dataclasses.replace(SCENES, pool_images=4))


def test_scene_tasks_point_at_their_images_under_the_document_root(scenes):
    root, tasks = scenes
    names = parse_label_config(LABEL_CONFIG)
    assert names.labels == LABELS == tuple("0123456789")
    assert len(tasks) == 4 and len({t.url for t in tasks}) == 4
    for scene in tasks:
        url = scene.task()["data"][names.value_key]
        assert urlparse(url).path == "/data/local-files/"
        assert (root / parse_qs(urlparse(url).query)["d"][0]).is_file()


def test_the_ground_truth_reads_back_as_the_backend_trains_on_it(scenes):
    """The result the annotator submits is the scene's boxes and digits, in Label Studio's percent."""
    _, tasks = scenes
    names = parse_label_config(LABEL_CONFIG)
    for scene in tasks:
        assert scene.boxes, scene
        result = scene.result()
        for region in result:
            assert {region["from_name"], region["to_name"]} == {names.from_name, names.to_name}
            value = region["value"]
            assert 0 <= value["x"] and value["x"] + value["width"] <= 100 + 1e-9
            assert 0 <= value["y"] and value["y"] + value["height"] <= 100 + 1e-9
        boxes, classes = annotation_boxes({"result": result}, names, scene.width, scene.height, scene.name)
        assert classes == [LABELS.index(label) + 1 for label in scene.labels]
        assert [c for b in boxes for c in b] == pytest.approx([c for b in scene.boxes for c in b], abs=1e-6)


class _Client:
    """The two calls the annotator's queue_head makes, answered as Label Studio does."""

    def __init__(self, views, tasks):
        self._views, self._tasks = views, tasks

    def views(self, project):
        return self._views

    def tasks(self, project, **params):
        assert params in ({"view": 7}, {})
        return self._tasks


def test_the_annotator_takes_the_queue_tab_in_its_order_skipping_labeled_tasks():
    views = [{"id": 3, "data": {"title": "Default"}}, {"id": 7, "data": {"title": QUEUE_TITLE}}]
    tasks = [{"id": i, "total_annotations": int(i == 12)} for i in (14, 12, 11, 13)]
    head, ranked = queue_head(_Client(views, tasks), 1, 2)
    assert [t["id"] for t in head] == [14, 11] and ranked


def test_before_the_first_ranking_the_annotator_takes_label_studios_order():
    tasks = [{"id": i, "total_annotations": 0} for i in (1, 2, 3)]
    head, ranked = queue_head(_Client([{"id": 3, "data": {"title": "Default"}}], tasks), 1, 2)
    assert [t["id"] for t in head] == [1, 2] and not ranked


class _Backend:
    """/jobs answering one snapshot per call, the last one for ever after."""

    def __init__(self, *snapshots):
        self._snapshots = list(snapshots)

    def get(self, path, **kw):
        jobs = self._snapshots.pop(0) if len(self._snapshots) > 1 else self._snapshots[0]
        return _Response({"jobs": {"1": jobs}})

    def log_tail(self, n):
        return ""


class _Response:
    def __init__(self, body):
        self._body = body

    def raise_for_status(self):
        pass

    def json(self):
        return self._body


def _record(status, started, finished=None, queued="t0"):
    return {"status": status, "queued": queued, "started": started, "finished": finished, "message": "", "progress": 0}


def test_the_annotator_waits_for_the_training_and_the_ranking_that_follows_it(monkeypatch):
    monkeypatch.setattr(demo.annotator.time, "sleep", lambda s: None)
    old_rank = _record("done", "t1", "t2")
    before = {"rank": old_rank}
    training = _record("running", "t3")
    trained = _record("done", "t3", "t5")
    # the follow-up keeps the old record's "queued": its start tells it from the ranking before
    ranking = _record("running", "t5", queued="t1")
    ranked = _record("done", "t5", "t6", queued="t1")
    backend = _Backend(
        {"rank": old_rank},
        {"rank": old_rank, "train": training},
        {"rank": old_rank, "train": trained},
        {"rank": ranking, "train": trained},
        {"rank": ranked, "train": trained},
    )
    seen = []
    jobs = wait_for_jobs(backend, 1, before, ("train", "rank"), seen.append, timeout_s=5)
    assert jobs == {"rank": ranked, "train": trained}


def test_a_failed_training_stops_the_demo(monkeypatch):
    monkeypatch.setattr(demo.annotator.time, "sleep", lambda s: None)
    backend = _Backend({"train": {**_record("failed", "t3", "t4"), "error": "FloatingPointError: loss"}})
    with pytest.raises(DemoError, match="the train job failed: FloatingPointError"):
        wait_for_jobs(backend, 1, {}, ("train", "rank"), print)
