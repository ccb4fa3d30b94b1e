"""The one way a job runs: ``python -m backend <kind>``, an embedded child process, or an RQ worker.

``run_job_from_env`` builds the service from this process's environment,
hands each job the parts it uses, and runs the job with its follow-up (a
training is followed by a ranking) under the job board's lock and record.
RQ enqueues it by name: ``backend.jobs.entry.run_job_from_env``.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from types import MappingProxyType

from tqdm import tqdm

from backend.jobs.board import run_job
from backend.jobs.predict import PredictJob
from backend.jobs.rank import RankingJob
from backend.jobs.train import NothingNew, TrainingJob
from backend.service import Service, build_service
from backend.settings import Settings
from model.distributed import join_process_group, torchrun_command, under_torchrun
from model.progress import Progress

logger = logging.getLogger(__name__)

Work = Callable[[Progress], dict]


def training_job(service: Service) -> TrainingJob:
    s = service.settings
    return TrainingJob(
        client=service.ls_client,
        images=service.images,
        store=service.store,
        registry=service.registry,
        config=s.train_config(),
        fetch_workers=s.fetch_workers,
        reinit=s.train_reinit,
        eval_min_tasks=s.eval_min_tasks,
        display_threshold=s.display_threshold,
    )


def ranking_job(service: Service) -> RankingJob:
    return RankingJob(
        client=service.ls_client, registry=service.registry, rankings=service.rankings, predictor=service.predictor
    )


def predict_job(service: Service) -> PredictJob:
    return PredictJob(
        handed=service.deferred,
        client=service.ls_client,
        registry=service.registry,
        rankings=service.rankings,
        predictor=service.predictor,
        board=service.board,
    )


def _train(service: Service, project: str, full: bool = False) -> Work:
    job = training_job(service)

    def work(progress: Progress) -> dict:
        try:
            version = job.run(project, progress)
        except NothingNew as exc:
            logger.info("project %s: nothing new to train on (%s); ranking only", project, exc)
            return {"skipped": str(exc)}
        meta = version.meta
        return {"model_version": version.name, "metrics": meta.metrics or {}, "loss": meta.loss_summary or {}}

    return work


def _rank(service: Service, project: str, full: bool = False) -> Work:
    job = ranking_job(service)
    return lambda progress: job.run(project, progress, full=full)


def _predict(service: Service, project: str, full: bool = False) -> Work:
    job = predict_job(service)
    return lambda progress: job.run(project, progress)


JOBS = MappingProxyType({"train": _train, "rank": _rank, "predict": _predict})
# A training (or a START_TRAINING with nothing new) is followed by a ranking with the serving model.
FOLLOW_UP = MappingProxyType({"train": "rank"})


def _with_bar(work: Work, title: str) -> Work:
    """``work`` reporting to a tqdm bar as well as to the job record."""

    def wrapped(record_progress: Progress) -> dict:
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
        training_job(service).run(project)
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
    service = build_service(settings)
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
