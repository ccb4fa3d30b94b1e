"""Command line: the same jobs the service runs, in the foreground.

    python -m backend train --project 3         # fine-tune on the annotations, then rank
    python -m backend rank --project 3 [--full] # update (or redo) the HUA queue
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from tqdm import tqdm

from backend.jobs import run_job
from backend.service import Service
from backend.settings import Settings
from backend.ranking import run_ranking
from backend.training import NothingNew, run_training

logger = logging.getLogger(__name__)


Work = Callable[[Callable[[float, str], None]], dict]


def _train(service: Service, project: str, full: bool = False) -> Work:
    def work(progress: Callable[[float, str], None]) -> dict:
        try:
            version = run_training(service, project, progress)
        except NothingNew as exc:
            logger.info("project %s: nothing new to train on (%s); ranking only", project, exc)
            return {"skipped": str(exc)}
        return {"model_version": version.name, "metrics": version.meta.get("metrics", {})}

    return work


def _rank(service: Service, project: str, full: bool = False) -> Work:
    return lambda progress: run_ranking(service, project, progress, full=full)


JOBS = {"train": _train, "rank": _rank}
# A training (or a START_TRAINING with nothing new) is followed by a ranking with the serving model.
FOLLOW_UP = {"train": "rank"}


def _with_bar(work: Work, title: str) -> Work:
    """``work`` reporting to a tqdm bar as well as to the job record."""

    def wrapped(record_progress: Callable[[float, str], None]) -> dict:
        with tqdm(total=1.0, desc=title, bar_format="{l_bar}{bar}| {postfix}") as bar:

            def progress(fraction: float, message: str) -> None:
                record_progress(fraction, message)
                bar.n = fraction
                bar.set_postfix_str(message)

            return work(progress)

    return wrapped


def run_job_from_env(project: str, kind: str, show_progress: bool = False, full: bool = False) -> dict:
    """Run one job, and its follow-up, with settings from this process's environment.

    RQ workers call this; so does ``python -m backend``.
    """
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = Service.create(settings)
    results = {}
    for step in (kind, FOLLOW_UP.get(kind)):
        if step is None:
            break
        work = JOBS[step](service, project, full=full)
        if show_progress:
            work = _with_bar(work, f"{step} project {project}")
        results[step] = run_job(service.board, project, step, work)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=sorted(JOBS), help="what to run")
    parser.add_argument("--project", required=True, help="Label Studio project id")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (background jobs)")
    parser.add_argument("--full", action="store_true", help="rank: re-rank every unlabeled task")
    args = parser.parse_args(argv)
    try:
        result = run_job_from_env(args.project, args.job, show_progress=not args.quiet, full=args.full)
    except Exception as exc:  # recorded in the job board by run_job; say it once, briefly
        logger.error("%s for project %s failed: %s: %s", args.job, args.project, type(exc).__name__, exc)
        return 1
    print(result)
    return 0
