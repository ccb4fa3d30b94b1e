"""The one way a job runs: ``python -m backend <kind>``, an embedded child process, or an RQ worker.

``run_job_from_env`` builds the service from this process's environment,
hands each job the parts it uses, and runs the job with its follow-up (a
training is followed by a ranking) under the job board's lock and record.
RQ enqueues it by name: ``backend.jobs.entry.run_job_from_env``. A ranking's
shards and reduce steps have theirs (``run_shard_from_env``,
``reduce_ranking_from_env``): child processes of the rank job and RQ
workers run them (``backend/jobs/shards.py``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from types import MappingProxyType

from tqdm import tqdm

from backend.jobs.board import JobRecord, run_job, utc_now
from backend.jobs.predict import PredictJob
from backend.jobs.rank import RankingJob, Shards
from backend.jobs.runners import JobSlots, ProcessShards, RQShards
from backend.jobs.shards import FIRST, FLIP, RunFolder, ShardWork, Superseded, ensure_current, gate, shard_progress
from backend.jobs.train import NothingNew, TrainingJob
from backend.service import RQ_QUEUE, Service, build_service
from backend.settings import Settings
from model.distributed import join_process_group, torchrun_command, under_torchrun
from model.progress import Progress
from model.versions import Version

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
        client=service.ls_client,
        registry=service.registry,
        rankings=service.rankings,
        predictor=service.predictor,
        root=service.store.root,
        shards=ranking_shards(service),
        shard_size=service.settings.rank_shard_size,
    )


def ranking_shards(service: Service) -> Shards | None:
    """Where a ranking's shards run: RQ jobs with REDIS_URL, child processes with MAX_JOB_PROCESSES > 1,
    else none (the rank job's own process ranks the whole pool)."""
    s = service.settings
    if s.redis_url:
        return _rq_shards(s)
    if s.max_job_processes > 1:
        slots = JobSlots(s.model_dir, s.max_job_processes, stale_after=s.job_timeout)
        return ProcessShards(slots, s.max_job_processes, s.rank_shard_retries, env=os.environ | s.to_env())
    return None


def shard_work(service: Service) -> ShardWork:
    p = service.predictor
    return ShardWork(service.store.root, p.images, p.hua, p.batch_size, p.fetch_workers)


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
    """The ranking, made the project's current one now: a ranking still running is superseded."""
    job = ranking_job(service)
    run = job.claim(project)
    return lambda progress: job.run(project, progress, full=full, run=run)


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


def _service_from_env() -> Service:
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return build_service(settings)


def _run_folder(service: Service, project: str, version: str, run: str) -> tuple[Version, RunFolder]:
    found = service.store.get(project, version)
    if found is None:
        raise FileNotFoundError(f"project {project} has no version {version} (removed by KEEP_VERSIONS?)")
    return found, RunFolder(found, run)


def _rq_shards(settings: Settings) -> RQShards:
    return RQShards(settings.redis_url, RQ_QUEUE, settings.job_timeout, settings.rank_shard_retries)


def run_shard_from_env(project: str, version: str, run: str, stage: str, index: int) -> None:
    """One shard of a ranking (a child process of the rank job, or an RQ job); its result goes to the run's folder."""
    service = _service_from_env()
    found, folder = _run_folder(service, project, version, run)
    try:
        shard_work(service).run(folder, lambda: service.registry.load(found).detector, stage, index)
    except Superseded as exc:
        logger.info("shard %s %s stopped: %s", stage, index, exc)
        return
    _report(service, folder)


def _report(service: Service, folder: RunFolder) -> None:
    """A run on RQ: its progress from the results on disk, into its record."""
    plan = folder.plan()
    fraction, message = shard_progress(folder, plan)
    service.board.update_run(plan.project, "rank", plan.run, lambda r: _progress(r, fraction, message))


def reduce_ranking_from_env(project: str, version: str, run: str, stage: str) -> dict | None:
    """A reduce step of a ranking on RQ, once every shard of ``stage`` has finished or failed for good.

    After the first pass: the gate, and the mirrored pass's shards enqueued.
    After that: the ranking pushed and recorded. A shard that failed for good
    (or any error here) fails the ranking with its reason, recorded, not
    raised: RQ retries a reduce only when its process dies. Nothing is
    pushed then; the previous ranking keeps serving. A reduce that RQ
    starts a second time waits for the first and leaves its outcome as it is.
    """
    service = _service_from_env()
    _, folder = _run_folder(service, project, version, run)
    shards = _rq_shards(service.settings)
    with shards.reduce_lock(project, run, stage):
        if folder.reduced(stage):
            logger.info("ranking %s of project %s: its %s reduce step has run already", run, project, stage)
            return None
        return _reduce(service, shards, folder, stage)


def _reduce(service: Service, shards: RQShards, folder: RunFolder, stage: str) -> dict | None:
    """``reduce_ranking_from_env``'s step, run once per stage."""
    plan = folder.plan()
    project, run = plan.project, plan.run
    try:
        ensure_current(service.store.root, project, run)
        if stage == FIRST:
            candidates = gate(folder, plan, service.predictor.hua)
            shards.enqueue(plan, FLIP, len(candidates))
            folder.mark_reduced(FIRST)
            _report(service, folder)
            return None
        result = ranking_job(service).finish_run(folder)
    except Superseded as exc:
        logger.info("ranking %s of project %s stopped: %s", run, project, exc)
        result = None
    except Exception as exc:
        logger.exception("ranking %s of project %s failed", run, project)
        error = f"{type(exc).__name__}: {exc}"
        service.board.update_run(project, "rank", run, lambda r: _finished(r, "failed", error=error))
        result = None
    else:
        service.board.update_run(project, "rank", run, lambda r: _finished(r, "done", result=result))
    shutil.rmtree(folder.path, ignore_errors=True)
    return result


def _progress(record: JobRecord, fraction: float, message: str) -> None:
    record.progress, record.message = round(fraction, 4), message


def _finished(record: JobRecord, status: str, *, error: str | None = None, result: dict | None = None) -> None:
    record.status, record.error, record.finished = status, error, utc_now()
    if status == "done":
        record.progress, record.result = 1.0, result or {}
