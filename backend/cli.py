"""Command line: the same jobs the service runs, in the foreground.

    python -m backend train --project 3         # fine-tune on the annotations, then rank
    python -m backend rank --project 3 [--full] # update (or redo) the HUA queue
    python -m backend predict --project 3       # the tasks /predict deferred past PREDICT_DEADLINE
"""

from __future__ import annotations

import argparse
import logging
import subprocess
from collections.abc import Callable
from types import MappingProxyType

from tqdm import tqdm

from backend.deferred import run_deferred_predictions
from backend.distributed import join_process_group, torchrun_command, under_torchrun
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
        meta = version.meta
        return {"model_version": version.name, "metrics": meta.get("metrics", {}), "loss": meta.get("loss_summary", {})}

    return work


def _rank(service: Service, project: str, full: bool = False) -> Work:
    return lambda progress: run_ranking(service, project, progress, full=full)


def _predict(service: Service, project: str, full: bool = False) -> Work:
    return lambda progress: run_deferred_predictions(service, project, progress)


JOBS = MappingProxyType({"train": _train, "rank": _rank, "predict": _predict})
# A training (or a START_TRAINING with nothing new) is followed by a ranking with the serving model.
FOLLOW_UP = MappingProxyType({"train": "rank"})


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


def _torchrun(project: str, processes: int) -> None:
    """Run the training as ``processes`` data-parallel processes (one per GPU)."""
    command = torchrun_command(processes, "backend", "train", "--project", project, "--quiet", "--no-follow-up")
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL)


def _worker_rank_training(service: Service, project: str) -> dict:
    """A non-zero rank: train alongside rank 0, which alone records, saves and ranks."""
    try:
        run_training(service, project)
    except NothingNew:  # rank 0 saw the same and skips too
        pass
    return {}


def run_job_from_env(
    project: str, kind: str, show_progress: bool = False, full: bool = False, follow_up: bool = True
) -> dict:
    """Run one job, and its follow-up, with settings from this process's environment.

    RQ workers call this; so does ``python -m backend``. With TRAIN_PROCESSES > 1
    a training is run by torchrun, then followed up here.
    """
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = Service.create(settings)
    if kind == "train" and under_torchrun() and join_process_group() != 0:
        return _worker_rank_training(service, project)
    if kind == "train" and settings.train_processes > 1 and not under_torchrun():
        _torchrun(project, settings.train_processes)
        kind = "rank"
    results = {}
    for step in (kind, FOLLOW_UP.get(kind) if follow_up else None):
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
