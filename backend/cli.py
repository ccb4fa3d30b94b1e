"""Command line: the same jobs the service runs, in the foreground.

python -m backend train --project 3         # fine-tune on the annotations, then rank
python -m backend rank --project 3 [--full] # update (or redo) the HUA queue
python -m backend predict --project 3       # the tasks /predict deferred past PREDICT_DEADLINE
"""

from __future__ import annotations

import argparse
import logging

from backend.jobs.entry import JOBS, run_job_from_env

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=sorted(JOBS), help="what to run")
    parser.add_argument("--project", required=True, help="Label Studio project id")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (background jobs)")
    parser.add_argument("--full", action="store_true", help="rank: re-rank every unlabeled task")
    parser.add_argument("--no-follow-up", dest="follow_up", action="store_false", help="train: do not rank afterwards")
    args = parser.parse_args(argv)
    try:
        result = run_job_from_env(
            args.project, args.job, show_progress=not args.quiet, full=args.full, follow_up=args.follow_up
        )
    except Exception as exc:  # recorded in the job board by run_job; say it once, briefly
        logger.error("%s for project %s failed: %s: %s", args.job, args.project, type(exc).__name__, exc)
        return 1
    print(result)
    return 0
