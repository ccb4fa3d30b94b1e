"""The demo's scripted annotator: it labels the head of the "HUA queue" tab with the ground truth.

A batch is the first ``batch`` tasks of the tab, in the tab's order (ascending task score, which
is what "Label all tasks" from that tab hands out), each annotated through Label Studio's API;
the first batch, before any model has been trained, is the first tasks by id.
Label Studio sends each annotation to the backend's /webhook; the backend trains after
TRAIN_EVERY of them and ranks the pool again with the new version. The annotator waits for that
training and ranking (the backend's /jobs) before the next batch, as a person following the
queue would label what the newest ranking put first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from demo.labelstudio import LabelStudio, MLBackendServer
from demo.scenes import SceneTask

QUEUE_TITLE = "HUA queue"  # backend/jobs/rank.py names the tab so
JOB_TIMEOUT_S = 1800.0
SHOW_EVERY_S = 30.0


class DemoError(RuntimeError):
    """The demo cannot go on (a job failed, or the queue is missing); the message says why."""


def queue_view(client: LabelStudio, project: int) -> dict | None:
    """The Data Manager tab the backend's ranking writes; None before the first ranking."""
    views = [v for v in client.views(project) if (v.get("data") or {}).get("title") == QUEUE_TITLE]
    return views[0] if views else None


def queue_head(client: LabelStudio, project: int, size: int) -> tuple[list[dict], bool]:
    """The first ``size`` unlabeled tasks of the HUA queue tab, in the tab's order, and True; before
    the first ranking (there is no model to rank with until the first training) the first ``size``
    in Label Studio's own order, and False."""
    view = queue_view(client, project)
    tasks = client.tasks(project, view=view["id"]) if view else client.tasks(project)
    return [t for t in tasks if not t.get("total_annotations") and not t.get("is_labeled")][:size], view is not None


def _jobs(backend: MLBackendServer, project: int) -> dict:
    response = backend.get("/jobs", timeout=30)
    response.raise_for_status()
    return response.json()["jobs"].get(str(project), {})


def wait_for_jobs(
    backend: MLBackendServer,
    project: int,
    before: dict,
    kinds: tuple[str, ...],
    progress: Callable[[str], None] = print,
    timeout_s: float = JOB_TIMEOUT_S,
) -> dict:
    """Wait until each of ``kinds`` (in order: "train" then its follow-up "rank") has a record newer
    than ``before`` (what /jobs said before the batch) that is done, each later one started after the
    earlier one finished (a follow-up keeps its record's ``queued``). Returns the project's records.
    Raises DemoError when a job fails."""
    t0, shown, shown_at = time.monotonic(), "", 0.0
    while True:
        jobs = _jobs(backend, project)
        after, done = "", True
        for kind in kinds:
            record = jobs.get(kind)
            fresh = record is not None and record != before.get(kind) and (record["started"] or "") >= after
            if fresh and record["status"] == "failed":
                raise DemoError(f"the {kind} job failed: {record.get('error')}\n{backend.log_tail(4000)}")
            if not (fresh and record["status"] == "done"):
                done = False
                message = (record or {}).get("message") or ""
                # a line when the job's phase changes ("measuring", "step", ...), else every SHOW_EVERY_S
                new_phase = message.split()[:1] != shown.split()[:1]
                if fresh and message and (new_phase or time.monotonic() - shown_at > SHOW_EVERY_S):
                    shown, shown_at = message, time.monotonic()
                    progress(f"    {kind}: {100 * record.get('progress', 0):3.0f} % {message}")
                break
            after = record["finished"] or ""
        if done:
            return jobs
        if time.monotonic() - t0 > timeout_s:
            raise DemoError(f"{'/'.join(kinds)} not done after {timeout_s:.0f} s: {jobs}\n{backend.log_tail(4000)}")
        time.sleep(1.0)


@dataclass
class Annotator:
    """Labels ``batch`` tasks of the queue at a time with their ground truth (``scenes``: by file name)."""

    client: LabelStudio
    backend: MLBackendServer
    project: int
    scenes: dict[str, SceneTask]
    batch: int = 10
    progress: Callable[[str], None] = print

    def scene_of(self, task: dict) -> SceneTask:
        url = task["data"]["image"]
        return self.scenes[url.rsplit("/", 1)[-1]]

    def label_batch(self) -> list[int]:
        """Annotate the queue's head; returns the task ids in the order they were labeled."""
        head, ranked = queue_head(self.client, self.project, self.batch)
        if len(head) < self.batch:
            raise DemoError(f"{len(head)} unlabeled tasks left, fewer than a batch of {self.batch}")
        where = f"the head of the {QUEUE_TITLE!r} tab" if ranked else "no ranking yet: the first tasks by id"
        self.progress(f"  labeling tasks {', '.join(str(t['id']) for t in head)} ({where})")
        for task in head:
            self.client.create_annotation(task["id"], self.scene_of(task).result())
        return [t["id"] for t in head]

    def cycle(self) -> tuple[list[int], dict]:
        """One batch, then the training it triggers and the ranking after it; returns the ids and /jobs."""
        before = _jobs(self.backend, self.project)
        ids = self.label_batch()
        return ids, wait_for_jobs(self.backend, self.project, before, ("train", "rank"), self.progress)
