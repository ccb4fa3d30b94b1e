"""What /health reports beyond liveness: conditions under which requests or jobs will keep failing.

/health answers 200 whatever it finds (it is also the image's HEALTHCHECK,
and restarting the container fixes none of these); ``status`` says
"degraded" and ``problems`` says why, so an operator sees the cause before
the next /predict answers 500 or the next training fails the same way.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

from backend.jobs.board import JobBoard
from backend.jobs.runners import redis_connection
from model.versions import WEIGHTS_FILE, is_project_id

# Failures that a retry will meet again until someone acts (frees disk, fixes a token or permissions).
REPEATING_CAUSES = (
    "No space left on device",
    "Disk quota exceeded",
    "Read-only file system",
    "Permission denied",
    "ProjectNotFound",
    "HTTP 401",
    "HTTP 403",
    "LABEL_STUDIO_URL is not set",
)
# Room a first version needs when none exists yet to measure: about the smallest backbone's weights file.
MIN_VERSION_BYTES = 64 * 2**20
_MB = 2**20


def project_disk_use(root: Path) -> dict[str, int]:
    """Bytes under each project's folder (versions, rankings, job records)."""
    use = {}
    for folder in root.iterdir() if root.is_dir() else []:
        if folder.is_dir() and is_project_id(folder.name):
            use[folder.name] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return use


def version_bytes(root: Path) -> int:
    """What one more version takes: the largest weights file there (versions of one backbone are alike)."""
    sizes = [p.stat().st_size for p in root.glob(f"*/v*/{WEIGHTS_FILE}") if is_project_id(p.parent.parent.name)]
    return max(sizes, default=MIN_VERSION_BYTES)


def disk_problem(root: Path) -> str | None:
    """MODEL_DIR cannot hold another version: the next training, or a new project's first version, will fail."""
    existing = next(p for p in (root.absolute(), *root.absolute().parents) if p.exists())  # made at first write
    free, need = shutil.disk_usage(existing).free, version_bytes(root)
    if free >= need:
        return None
    return (
        f"MODEL_DIR {os.fspath(root)} has {free / _MB:.1f} MB free, less than the {need / _MB:.1f} MB "
        f"of one model version: new versions cannot be saved"
    )


def job_problems(board: JobBoard) -> list[str]:
    """Each project's last jobs that failed for a cause that will repeat."""
    found = []
    for project, kinds in board.all().items():
        for kind, record in kinds.items():
            error = record.get("error") or ""
            if record.get("status") == "failed" and any(cause in error for cause in REPEATING_CAUSES):
                found.append(f"project {project}: the last {kind} job failed and will again: {error}")
    return found


def redis_problem(url: str, root: Path, timeout: float = 0.5) -> str | None:
    """Redis (REDIS_URL) does not answer within ``timeout``: jobs wait in MODEL_DIR/.outbox until it does."""
    try:
        redis_connection(url, timeout).ping()
        return None
    except Exception as exc:  # any failure to answer: down, refused, timed out, refused auth
        waiting = len(list((root / ".outbox").glob("*.job")))
        where = urlparse(url).hostname, urlparse(url).port
        return (
            f"Redis at {where[0]}:{where[1]} is unreachable ({type(exc).__name__}): jobs wait until it is back "
            f"({waiting} waiting); rankings running on RQ continue when it is"
        )


def problems(root: Path, board: JobBoard, redis_url: str = "") -> list[str]:
    """Everything that makes the service degraded, most basic first."""
    disk = disk_problem(root)
    redis = redis_problem(redis_url, root) if redis_url else None
    return [p for p in (disk, redis) if p] + job_problems(board)
