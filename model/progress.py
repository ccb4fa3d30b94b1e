"""The progress callback that every long step (training, ranking, evaluation, job) reports through."""

from __future__ import annotations

from collections.abc import Callable

#: Called with (fraction done in [0, 1], a message a user can read).
Progress = Callable[[float, str], None]
