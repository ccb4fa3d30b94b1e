"""Tests of backend/annotations.py: from Label Studio's exported tasks to training
samples (newest usable annotation per task, percent -> pixels, what is refused
and skipped). Images come from helpers' image set under the session document root.
"""

from __future__ import annotations

import logging

import pytest
import torch

from backend.annotations import annotation_boxes, annotation_regions, newest_annotation, region_box, training_set
from backend.labels import parse_label_config
from backend.service import build_service
from helpers import DISPLAYED_SIZE, FROM_NAME, HUGE, LABEL_CONFIG, ROTATED, SMALL, TEXT, TO_NAME, WIDE, make_settings

NAMES = parse_label_config(LABEL_CONFIG)


def region(x, y, w, h, label="car", rotation=0.0, from_name=FROM_NAME, kind="rectanglelabels") -> dict:
    return {
        "from_name": from_name,
        "to_name": TO_NAME,
        "type": kind,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, kind: [label]},
    }


def annotation(ann_id: int, *regions, cancelled=False, created="2025-01-01T00:00:00Z", updated=None) -> dict:
    return {
        "id": ann_id,
        "result": list(regions),
        "was_cancelled": cancelled,
        "created_at": created,
        "updated_at": updated or created,
    }


def task(task_id: int, image: str, *annotations) -> dict:
    return {"id": task_id, "data": {"image": f"/data/local-files/?d={image}"}, "annotations": list(annotations)}


@pytest.fixture
def loader(tmp_path, image_root):
    settings = make_settings(tmp_path / "models", local_files_document_root=str(image_root))
    return build_service(settings).images


class TestNewestAnnotation:
    def test_newest_by_update_time(self):
        old = annotation(1, created="2025-01-01T00:00:00Z", updated="2025-01-03T00:00:00Z")
        new = annotation(2, created="2025-01-02T00:00:00Z")
        assert newest_annotation({"annotations": [old, new]})["id"] == 1  # updated later

    def test_cancelled_annotations_do_not_count(self):
        kept = annotation(1, created="2025-01-01T00:00:00Z")
        skipped = annotation(2, cancelled=True, created="2025-02-01T00:00:00Z")
        assert newest_annotation({"annotations": [kept, skipped]})["id"] == 1

    def test_only_cancelled_or_none(self):
        assert newest_annotation({"annotations": [annotation(1, cancelled=True)]}) is None
        assert newest_annotation({"annotations": []}) is None
        assert newest_annotation({}) is None

    def test_ties_broken_by_id(self):
        a, b = annotation(7), annotation(9)
        assert newest_annotation({"annotations": [b, a]})["id"] == 9


class TestRegionBox:
    def test_percent_to_pixels(self):
        box = region_box({"x": 10, "y": 20, "width": 50, "height": 25}, 200, 100)
        assert box == pytest.approx([20.0, 20.0, 120.0, 45.0])

    def test_clipped_to_the_image(self):
        box = region_box({"x": -5, "y": 90, "width": 20, "height": 20}, 200, 100)
        assert box == pytest.approx([0.0, 90.0, 30.0, 100.0])

    def test_degenerate_boxes_are_dropped(self):
        ann = annotation(1, region(10, 10, 0.1, 50), region(10, 10, 50, 50))
        boxes, labels = annotation_boxes(ann, NAMES, 200, 100, task_id=3)
        assert boxes == [pytest.approx([20.0, 10.0, 120.0, 60.0])]
        assert labels == [1]


class TestRegions:
    def test_labels_are_indexed_from_one(self):
        ann = annotation(1, region(0, 0, 10, 10, "car"), region(0, 0, 10, 10, "person"))
        assert [cls for _, cls in annotation_regions(ann, NAMES, 1)] == [1, 2]

    def test_rotated_boxes_are_refused_with_a_warning(self, caplog):
        ann = annotation(1, region(0, 0, 10, 10, rotation=30.0), region(0, 0, 10, 10, rotation=0.0))
        with caplog.at_level(logging.WARNING, logger="backend.annotations"):
            kept = annotation_regions(ann, NAMES, 42)
        assert len(kept) == 1
        assert any("task 42" in r.message and "rotated" in r.message for r in caplog.records)

    def test_unknown_labels_are_skipped_with_a_warning(self, caplog):
        ann = annotation(1, region(0, 0, 10, 10, "dragon"), region(0, 0, 10, 10, "car"))
        with caplog.at_level(logging.WARNING, logger="backend.annotations"):
            kept = annotation_regions(ann, NAMES, 43)
        assert [cls for _, cls in kept] == [1]
        assert any("task 43" in r.message and "dragon" in r.message for r in caplog.records)

    @pytest.mark.parametrize("broken", [{"width": None}, {"x": "left"}, {"height": float("nan")}, {"y": ...}])
    def test_malformed_regions_are_skipped_with_a_warning(self, caplog, broken):
        bad = region(0, 0, 10, 10)
        for key, value in broken.items():
            bad["value"].pop(key) if value is ... else bad["value"].update({key: value})
        ann = annotation(1, bad, region(5, 5, 10, 10, "person"))
        with caplog.at_level(logging.WARNING, logger="backend.annotations"):
            kept = annotation_regions(ann, NAMES, 44)
        assert [cls for _, cls in kept] == [2]
        assert any("task 44" in r.message and "numeric" in r.message for r in caplog.records)

    def test_other_controls_are_ignored(self):
        ann = annotation(1, region(0, 0, 10, 10, from_name="other"), region(0, 0, 10, 10, kind="polygonlabels"))
        assert annotation_regions(ann, NAMES, 1) == []


class TestTrainingSet:
    def test_pixels_of_the_displayed_image(self, loader):
        tasks = [
            task(1, WIDE, annotation(11, region(10, 20, 50, 50, "car"))),
            task(2, ROTATED, annotation(12, region(0, 0, 50, 50, "person"))),  # displayed 40 x 60
        ]
        data = training_set(tasks, NAMES, loader, workers=2)
        assert data.skipped == {}
        assert data.annotation_ids == [11, 12]
        assert data.annotation_updated == {"11": "2025-01-01T00:00:00Z", "12": "2025-01-01T00:00:00Z"}
        wide, rotated = data.samples
        assert wide.key == "11" and rotated.key == "12"
        assert wide.boxes.tolist() == [pytest.approx([20.0, 20.0, 120.0, 70.0])]
        assert wide.labels.tolist() == [1]
        w, h = DISPLAYED_SIZE[ROTATED]
        assert rotated.boxes.tolist() == [pytest.approx([0.0, 0.0, w / 2, h / 2])]
        assert rotated.labels.tolist() == [2]
        assert rotated.boxes.dtype == torch.float32 and rotated.labels.dtype == torch.int64

    def test_newest_annotation_per_task(self, loader):
        old = annotation(21, region(0, 0, 10, 10), created="2025-01-01T00:00:00Z")
        new = annotation(22, region(50, 50, 10, 10, "person"), created="2025-01-02T00:00:00Z")
        cancelled = annotation(23, region(0, 0, 90, 90), cancelled=True, created="2025-01-03T00:00:00Z")
        data = training_set([task(1, WIDE, old, new, cancelled)], NAMES, loader, workers=1)
        assert data.annotation_ids == [22]
        assert data.samples[0].labels.tolist() == [2]

    def test_tasks_without_a_usable_annotation_are_left_out(self, loader):
        tasks = [task(1, WIDE), task(2, WIDE, annotation(31, region(0, 0, 10, 10), cancelled=True))]
        data = training_set(tasks, NAMES, loader, workers=2)
        assert data.samples == [] and data.annotation_ids == [] and data.skipped == {}

    def test_an_annotation_without_boxes_is_a_negative(self, loader):
        data = training_set([task(1, SMALL, annotation(41))], NAMES, loader, workers=1)
        assert len(data.samples) == 1
        assert data.samples[0].boxes.shape == (0, 4) and data.samples[0].labels.shape == (0,)

    def test_an_annotation_whose_every_box_was_refused_is_not_a_negative(self, loader, caplog):
        """Rotated-only or unknown-label-only annotations would teach "nothing here": left out, counted."""
        tasks = [
            task(1, WIDE, annotation(61, region(0, 0, 10, 10, rotation=45.0))),
            task(2, WIDE, annotation(62, region(0, 0, 10, 10, "dragon"))),
            task(3, WIDE, annotation(63, region(0, 0, 10, 10))),
        ]
        with caplog.at_level(logging.WARNING, logger="backend.annotations"):
            data = training_set(tasks, NAMES, loader, workers=2)
        assert data.annotation_ids == [63]
        assert data.skipped == {"no usable box": 2}

    def test_images_that_fail_are_skipped_and_counted(self, loader, caplog):
        tasks = [
            task(1, WIDE, annotation(51, region(0, 0, 10, 10))),
            task(2, "missing.png", annotation(52, region(0, 0, 10, 10))),
            task(3, TEXT, annotation(53, region(0, 0, 10, 10))),
            task(4, HUGE, annotation(54, region(0, 0, 10, 10))),  # over MAX_IMAGE_PIXELS
            {"id": 5, "data": {}, "annotations": [annotation(55, region(0, 0, 10, 10))]},  # no URL
            task(6, "../secret.png", annotation(56, region(0, 0, 10, 10))),  # outside the document root
        ]
        with caplog.at_level(logging.WARNING, logger="backend.annotations"):
            data = training_set(tasks, NAMES, loader, workers=4)
        assert data.annotation_ids == [51]
        assert data.skipped == {"image": 5}
        warned = " ".join(r.message for r in caplog.records)
        for task_id in (2, 3, 4, 5, 6):
            assert f"task {task_id}:" in warned
