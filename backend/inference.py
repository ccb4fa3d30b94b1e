"""One inference queue per serving process: every request's images reach the model through one thread.

On a CPU, torch already spreads one forward pass over every core (intra-op
threads). Two requests calling the model at once (two users pressing
"Retrieve predictions", or Label Studio's per-task calls during a retrieve)
would run two passes that each want every core: oversubscribed threads, both
slower than one after the other, and twice the activation memory. Here a
request puts its images in a queue and waits; one consumer thread runs the
detector on batches of up to BATCH_SIZE images gathered across all waiting
requests, first come first served. On a GPU it keeps one stream of batches too.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor

from model.detections import Detections
from model.detector import Detector

logger = logging.getLogger(__name__)


@dataclass
class _Waiter:
    """One ``predict`` call: its results fill in as its images are run, possibly over several batches."""

    remaining: int
    results: list[Detections | None] = field(default_factory=list)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.results = [None] * self.remaining

    def put(self, slot: int, detections: Detections) -> None:
        self.results[slot] = detections
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


@dataclass(frozen=True)
class _Item:
    """One image of a call; images batch together only with the same detector and flip."""

    detector: Detector
    flip: bool
    image: Tensor
    waiter: _Waiter
    slot: int

    def joins(self, other: _Item) -> bool:
        return self.detector is other.detector and self.flip == other.flip


class InferenceQueue:
    """Runs ``Detector.predict`` for every caller on one consumer thread, in batches across callers.

    Args:
        batch_size (int): at most this many images per forward pass (BATCH_SIZE).
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self._items: deque[_Item] = deque()
        self._ready = threading.Condition()
        self._consumer: threading.Thread | None = None

    def predict(self, detector: Detector, images: Sequence[Tensor], flip: bool = False) -> list[Detections]:
        """``detector.predict(images, flip=flip)``, run by the consumer thread; blocks until done.

        Raises what the detector raised for a batch holding any of these images
        (e.g. out of memory): the callers of that batch fail, the queue goes on.
        """
        if not images:
            return []
        waiter = _Waiter(len(images))
        with self._ready:
            self._items.extend(_Item(detector, flip, image, waiter, i) for i, image in enumerate(images))
            self._start()
            self._ready.notify()
        waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        return list(waiter.results)

    def __len__(self) -> int:
        """Images waiting for a forward pass (not counting the batch running now)."""
        with self._ready:
            return len(self._items)

    def bind(self, detector: Detector) -> QueuedDetector:
        """``detector`` as a drop-in whose ``predict`` goes through this queue."""
        return QueuedDetector(detector, self)

    def _start(self) -> None:
        """Start the consumer on first use (so that a forked worker starts its own)."""
        if self._consumer is None or not self._consumer.is_alive():
            self._consumer = threading.Thread(target=self._consume, name="inference", daemon=True)
            self._consumer.start()

    def _take(self) -> list[_Item]:
        """The next batch: the oldest image and up to ``batch_size - 1`` later ones that join it."""
        with self._ready:
            while not self._items:
                self._ready.wait()
            head = self._items[0]
            batch: list[_Item] = []
            others: list[_Item] = []
            while self._items and len(batch) < self.batch_size:
                item = self._items.popleft()
                (batch if item.joins(head) else others).append(item)
            self._items.extendleft(reversed(others))  # they keep their places at the front
            return batch

    def _consume(self) -> None:
        while True:
            batch = [item for item in self._take() if item.waiter.error is None]  # a failed call wants no more
            if not batch:
                continue
            try:
                detections = batch[0].detector.predict([item.image for item in batch], flip=batch[0].flip)
            except Exception as exc:  # noqa: BLE001 (belongs to this batch's callers; the queue goes on)
                logger.warning("a batch of %d images failed: %s: %s", len(batch), type(exc).__name__, exc)
                for item in batch:
                    item.waiter.fail(exc)
                continue
            for item, found in zip(batch, detections):
                item.waiter.put(item.slot, found)


@dataclass(frozen=True)
class QueuedDetector:
    """A ``Detector`` seen through an ``InferenceQueue``: what ``predict_tasks`` and HUA scoring call."""

    detector: Detector
    queue: InferenceQueue

    @property
    def labels(self) -> list[str]:
        return self.detector.labels

    def predict(self, images: Sequence[Tensor], flip: bool = False) -> list[Detections]:
        return self.queue.predict(self.detector, images, flip=flip)
