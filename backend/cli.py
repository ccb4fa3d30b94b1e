"""Command line: the same jobs the service runs, in the foreground.

python -m backend train --project 3         # fine-tune on the annotations, then rank
python -m backend rank --project 3 [--full] # update (or redo) the HUA queue
python -m backend predict --project 3       # the tasks /predict deferred past PREDICT_DEADLINE

A rank job runs its shards as ``python -m backend rank-shard ...`` (``backend/jobs/shards.py``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from backend.jobs.entry import JOBS, run_job_from_env, run_shard_from_env
from backend.jobs.shards import FIRST, FLIP

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["rank-shard"]:
        return shard_main(argv[1:])
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


def shard_main(argv: list[str]) -> int:
    """One shard of a ranking, as its rank job starts it; its error goes to the run's folder and stderr."""
    parser = argparse.ArgumentParser(prog="python -m backend rank-shard", description=shard_main.__doc__)
    parser.add_argument("--project", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--stage", required=True, choices=(FIRST, FLIP))
    parser.add_argument("--shard", required=True, type=int)
    args = parser.parse_args(argv)
    try:
        run_shard_from_env(args.project, args.version, args.run, args.stage, args.shard)
    except Exception as exc:
        logger.error(
            "shard %s %s of project %s failed: %s: %s", args.stage, args.shard, args.project, type(exc).__name__, exc
        )
        return 1
    return 0
