"""Keeps threads free for the light routes while /predict is saturated.

gunicorn's gthread worker serves every request from one pool of THREADS
threads, first come first served. A /predict holds its thread while it waits
for the inference queue, so enough concurrent /predict calls would leave none
for /health, /webhook, /jobs or /metrics, which then wait behind inference
(Label Studio gives a webhook 1 s, the image's HEALTHCHECK 5 s). At most
THREADS - LIGHT_THREADS /predict calls run at once in a worker; the next one
is refused at once with 503 and Retry-After instead of taking a thread to
wait in, so LIGHT_THREADS threads are always left to the light routes.
"""

from __future__ import annotations

import threading

HEAVY_ENDPOINTS = frozenset({"backend.predict"})


class Admission:
    """A non-blocking counter of the heavy requests in flight in this worker.

    Args:
        limit (int): how many may run at once.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit)

    def enter(self) -> bool:
        """Take a place if one is free, never waiting for it; False when all are taken."""
        return self._free.acquire(blocking=False)

    def leave(self) -> None:
        self._free.release()
