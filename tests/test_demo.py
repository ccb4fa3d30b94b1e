"""``make demo``'s parts that need no server: its scene project and its annotator's choice of tasks.

The demo itself (Label Studio, the backend, four trainings: about 15 minutes) is not run here.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import parse_qs, urlparse

import pytest

from backend.annotations import annotation_boxes
from backend.labels import parse_label_config
from demo.annotator import QUEUE_TITLE, queue_head
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
