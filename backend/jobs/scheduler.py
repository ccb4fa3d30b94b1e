"""From Label Studio's events to jobs: at most one running and one waiting per project and kind."""

from __future__ import annotations

from collections.abc import Callable

from backend.jobs.board import JobBoard, JobRecord

TRAIN_NOW = frozenset({"START_TRAINING"})
RANK_NEW = frozenset({"TASKS_CREATED"})
ANNOTATION_EVENTS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"})


class Scheduler:
    """Turns Label Studio events into at most one running and one waiting job per project.

    Args:
        board (JobBoard): shared state.
        submit (Callable[[str, str], None]): starts a job (EmbeddedRunner or RQRunner).
        train_every (int): annotation events that trigger a training.
    """

    def __init__(self, board: JobBoard, submit: Callable[[str, str], None], train_every: int) -> None:
        self.board = board
        self.submit = submit
        self.train_every = train_every

    def on_event(self, project: str, action: str) -> str:
        """What the event did: scheduled, coalesced, counted or ignored."""
        if action in TRAIN_NOW:
            return self.request(project, "train")
        if action in RANK_NEW:
            return self.request(project, "rank")
        if action in ANNOTATION_EVENTS:
            if self.board.count_annotation(project, self.train_every):
                return self.request(project, "train")
            return "counted"
        return "ignored"

    def request(self, project: str, kind: str) -> str:
        """Queue a job unless one is already waiting.

        Whatever fails after the flag is claimed (the record's write on a full
        disk, the queue) clears the flag again, so the next event tries anew.
        """
        if kind == "train":
            self.board.reset_annotations(project)
        if not self.board.claim_pending(project, kind):
            return "coalesced"
        try:
            current = self.board.read(project, kind)
            if (
                current is None or current.status != "running"
            ):  # a running job keeps its record; the flag says one waits
                self.board.write(JobRecord(project, kind))
            self.submit(project, kind)
        except BaseException:
            self.board.clear_pending(project, kind)
            raise
        return "scheduled"
