"""Command line: the same jobs the service runs, in the foreground.

    python -m backend train --project 3     # fine-tune on the project's annotations
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
from backend.training import run_training

logger = logging.getLogger(__name__)


def _train(service: Service, project: str) -> Callable[[Callable[[float, str], None]], dict]:
    def work(progress: Callable[[float, str], None]) -> dict:
        version = run_training(service, project, progress)
        return {"model_version": version.name, "metrics": version.meta.get("metrics", {})}

    return work


JOBS = {"train": _train}


def run_job_from_env(project: str, kind: str, show_progress: bool = False) -> dict:
    """Run one job with settings from this process's environment (RQ workers call this)."""
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = Service.create(settings)
    work = JOBS[kind](service, project)
    if not show_progress:
        return run_job(service.board, project, kind, work)
    with tqdm(total=1.0, desc=f"{kind} project {project}", unit="", bar_format="{l_bar}{bar}| {postfix}") as bar:

        def progress(fraction: float, message: str) -> None:
            bar.n = fraction
            bar.set_postfix_str(message)

        return run_job(service.board, project, kind, lambda p: work(lambda f, m: (p(f, m), progress(f, m))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=sorted(JOBS), help="what to run")
    parser.add_argument("--project", required=True, help="Label Studio project id")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (background jobs)")
    args = parser.parse_args(argv)
    try:
        result = run_job_from_env(args.project, args.job, show_progress=not args.quiet)
    except Exception as exc:  # recorded in the job board by run_job; say it once, briefly
        logger.error("%s for project %s failed: %s: %s", args.job, args.project, type(exc).__name__, exc)
        return 1
    print(result)
    return 0
