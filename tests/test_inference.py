"""Tests of backend/inference.py: one consumer thread, batches gathered across callers.

A gated stub detector holds its first forward pass until the test has queued
the other callers' images, so which images share a batch is decided by the
queue, not by thread timing. The real small model checks that going through
the queue changes nothing in the results.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from backend.inference import InferenceQueue
from backend.service import build_service
from helpers import LABELS, make_settings
from model.detections import Detections

WAIT_S = 30.0  # a bound on waiting for threads, never a speed figure


class GatedDetector:
    """Answers, per image, one detection whose width is the image's fill value; records
    every batch as those values. The first ``gated`` calls wait until ``gate`` is set."""

    def __init__(self, gated: int = 1, fail_on: int | None = None) -> None:
        self.labels = list(LABELS)
        self.batches: list[tuple[bool, list[int]]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gated = gated
        self.fail_on = fail_on

    def predict(self, images, flip=False):
        values = [int(img[0, 0, 0]) for img in images]
        self.batches.append((flip, values))
        if len(self.batches) <= self.gated:
            self.entered.set()
            assert self.gate.wait(WAIT_S)
        if self.fail_on is not None and self.fail_on in values:
            raise RuntimeError("out of memory (simulated)")
        return [Detections.empty(num_classes=len(LABELS), width=v, height=1) for v in values]


def _images(*values: int) -> list[torch.Tensor]:
    return [torch.full((3, 4, 4), float(v)) for v in values]


def _call(queue: InferenceQueue, detector, values, results: dict, key: str, flip: bool = False) -> threading.Thread:
    """``queue.predict`` in a thread of its own; the widths (or the error) land in ``results[key]``."""

    def run() -> None:
        try:
            results[key] = [d.width for d in queue.predict(detector, _images(*values), flip=flip)]
        except RuntimeError as exc:
            results[key] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_queued(queue: InferenceQueue, count: int) -> None:
    """Until ``count`` images wait in the queue (the consumer is held by the gate)."""
    deadline = time.monotonic() + WAIT_S
    while len(queue) < count:
        assert time.monotonic() < deadline, f"{len(queue)} images queued, expected {count}"
        time.sleep(0.01)


def _first_call_held(queue: InferenceQueue, detector: GatedDetector, results: dict) -> threading.Thread:
    """Caller "a" with one image, whose forward pass is now running and held by the gate."""
    thread = _call(queue, detector, [1], results, "a")
    assert detector.entered.wait(WAIT_S)
    return thread


class TestCrossRequestBatching:
    def test_waiting_callers_share_one_batch(self):
        queue, detector, results = InferenceQueue(batch_size=4), GatedDetector(), {}
        threads = [_first_call_held(queue, detector, results)]
        threads.append(_call(queue, detector, [2, 3], results, "b"))
        _wait_queued(queue, 2)
        threads.append(_call(queue, detector, [4, 5], results, "c"))
        _wait_queued(queue, 4)
        detector.gate.set()
        for thread in threads:
            thread.join(WAIT_S)
        assert detector.batches == [(False, [1]), (False, [2, 3, 4, 5])]
        assert results == {"a": [1], "b": [2, 3], "c": [4, 5]}  # each caller gets its own, in order

    def test_batches_never_exceed_the_batch_size_and_stay_in_order(self):
        queue, detector, results = InferenceQueue(batch_size=3), GatedDetector(), {}
        threads = [_first_call_held(queue, detector, results)]
        threads.append(_call(queue, detector, [2, 3, 4, 5], results, "b"))
        _wait_queued(queue, 4)
        threads.append(_call(queue, detector, [6, 7], results, "c"))
        _wait_queued(queue, 6)
        detector.gate.set()
        for thread in threads:
            thread.join(WAIT_S)
        assert [values for _, values in detector.batches] == [[1], [2, 3, 4], [5, 6, 7]]
        assert results == {"a": [1], "b": [2, 3, 4, 5], "c": [6, 7]}

    def test_flipped_and_plain_images_or_two_models_never_share_a_batch(self):
        queue, detector, results = InferenceQueue(batch_size=8), GatedDetector(), {}
        other = GatedDetector(gated=0)
        threads = [_first_call_held(queue, detector, results)]
        threads.append(_call(queue, detector, [2], results, "plain"))
        _wait_queued(queue, 1)
        threads.append(_call(queue, detector, [3], results, "flipped", flip=True))
        _wait_queued(queue, 2)
        threads.append(_call(queue, other, [4], results, "other"))
        _wait_queued(queue, 3)
        threads.append(_call(queue, detector, [5], results, "plain2"))
        _wait_queued(queue, 4)
        detector.gate.set()
        for thread in threads:
            thread.join(WAIT_S)
        assert detector.batches == [(False, [1]), (False, [2, 5]), (True, [3])]
        assert other.batches == [(False, [4])]
        assert results == {"a": [1], "plain": [2], "flipped": [3], "other": [4], "plain2": [5]}

    def test_a_failing_batch_fails_its_callers_only(self):
        queue, detector, results = InferenceQueue(batch_size=2), GatedDetector(fail_on=2), {}
        threads = [_first_call_held(queue, detector, results)]
        threads.append(_call(queue, detector, [2], results, "b"))
        _wait_queued(queue, 1)
        threads.append(_call(queue, detector, [3], results, "c"))
        _wait_queued(queue, 2)  # c's image is queued before d's: the order is the test's, not the threads'
        threads.append(_call(queue, detector, [4, 5], results, "d"))
        _wait_queued(queue, 4)
        detector.gate.set()
        for thread in threads:
            thread.join(WAIT_S)
        # b and c shared the failing batch; d's images came after and were predicted
        assert isinstance(results["b"], RuntimeError) and isinstance(results["c"], RuntimeError)
        assert results["a"] == [1] and results["d"] == [4, 5]

    def test_no_images_run_nothing(self):
        queue, detector = InferenceQueue(batch_size=2), GatedDetector(gated=0)
        assert queue.predict(detector, []) == []
        assert detector.batches == []


@pytest.mark.parametrize("flip", [False, True])
def test_the_real_model_gives_the_same_results_through_the_queue(tmp_path, flip):
    detector = build_service(make_settings(tmp_path)).registry.get("1", LABELS).detector
    images = [torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    direct = detector.predict(images, flip=flip)
    queued = InferenceQueue(batch_size=2).bind(detector).predict(images, flip=flip)
    assert len(queued) == len(direct) == 3
    for a, b in zip(queued, direct):
        assert torch.allclose(a.boxes, b.boxes, atol=1e-4) and torch.allclose(a.scores, b.scores, atol=1e-5)
        assert (a.width, a.height) == (b.width, b.height)
