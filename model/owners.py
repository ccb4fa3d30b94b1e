"""Which process owns something on disk (a job flag, a lock, a temporary folder), and whether it is gone.

Files in MODEL_DIR outlive the processes that made them: a kill -9, an
out-of-memory kill or a container restart leaves flags and folders behind.
Recording the owner lets the next process tell a live owner from a dead one
at once instead of waiting for a timeout. A pid alone is not enough: after a
container restart the new processes get the same small pids, so the owner is
the pid plus the process's start time (and the boot it started in).
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

_PROC = Path("/proc")


@cache
def _boot_id() -> str:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The process's start (boot id + clock ticks since boot); None when it has ended, "" when unknown.

    ``/proc/<pid>/stat``'s 22nd field; the command name (2nd field) may hold
    spaces and parentheses, so fields are counted after its last ``)``. A
    zombie (state Z: killed, not yet reaped by its parent) has ended.
    """
    if not _PROC.is_dir():
        return ""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return f"{_boot_id()}/{fields[19]}"


@dataclass(frozen=True)
class ProcessOwner:
    """A process, named so that it can be recognised from another process on the same host.

    Args:
        pid (int): its process id.
        host (str): ``socket.gethostname()`` where it ran.
        started (str): its start (``_start_time``); "" where /proc is missing.
    """

    pid: int
    host: str
    started: str = ""

    @classmethod
    def current(cls) -> ProcessOwner:
        pid = os.getpid()
        return cls(pid, socket.gethostname(), _start_time(pid) or "")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> ProcessOwner | None:
        """The owner recorded in ``data``, or None when it is not one (an old or damaged file)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(int(data["pid"]), str(data["host"]), str(data.get("started", "")))
        except (KeyError, TypeError, ValueError):
            return None

    def is_gone(self) -> bool:
        """True when this host can tell the process has ended (or its pid now names another one).

        A process on another host is never called gone: this host cannot see
        it (what it left is cleared by age instead).
        """
        if self.host != socket.gethostname():
            return False
        started = _start_time(self.pid)
        if started is None:
            return True
        if started and self.started:
            return started != self.started
        return not _pid_exists(self.pid)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
