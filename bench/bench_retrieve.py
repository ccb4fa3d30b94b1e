"""One "Retrieve predictions" over a fresh project in a real Label Studio, and /predict under 4 callers.

In one run, on this machine:

1. Label Studio 1.23.2 (the test harness's venv and start-up, tests/labelstudio.py)
   and the backend under gunicorn (BACKBONE, WEIGHTS=none, PREDICT_DEADLINE,
   BATCH_SIZE as given); a fresh project of N JPEG tasks served as local files,
   the backend connected after the import (no ranking exists: every task needs
   the model). The backend's first /predict with no task loads the model.
2. One "Retrieve predictions" over all N tasks (the Data Manager action, one
   /predict): (a) seconds until Label Studio answers (goal: PREDICT_DEADLINE + 5 s);
   (b) seconds until every task holds a prediction of the version, the background
   predict job included (polled from /api/projects/{id}/model-versions), checked to
   be exactly N predictions.
3. (c) N bare forward passes of the same decoded images at the same batch size
   (``Detector.predict`` on the version the service wrote, in this process, after
   the service is idle). Goal: (b) / (c) <= 1.15.
4. /predict throughput over HTTP with 1 caller, then with 4 concurrent callers
   (each request BATCH_SIZE tasks of the project, the same requests in total);
   goal: 4-caller throughput / 1-caller throughput >= 0.9 (the inference queue
   batches across callers instead of oversubscribing the cores); medians of
   --rounds alternated rounds.

Usage (from the repository root)::

    .venv/bin/python -m bench.bench_retrieve --tasks 200 --deadline 20

The issue's figure is --tasks 2000 with the default deadline of 60 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import requests
import torch

from backend.settings import Settings
from bench.bench_predict import decoded_tensors, write_images
from bench.common import fmt_goal, print_table, run_and_report
from model.detector import Detector
from model.registry import load_version_model
from model.versions import VersionStore

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))
from labelstudio import ensure_ls_venv, start_label_studio, start_ml_backend  # noqa: E402

FOLDER = "bench-retrieve"
LABELS = ("car", "person")
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
    + "".join(f'<Label value="{label}"/>' for label in LABELS)
    + "</RectangleLabels></View>"
)
ANSWER_SLACK_S = 5.0
POLL_S = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="N tasks in the project")
    parser.add_argument("--deadline", type=float, default=60.0, help="PREDICT_DEADLINE, seconds")
    parser.add_argument("--batch-size", type=int, default=8, help="BATCH_SIZE of the service and of (c)")
    parser.add_argument("--backbone", default="mobilenet_v3_fpn", help="BACKBONE (default: BACKBONE=auto on a CPU)")
    parser.add_argument("--size", default="640x480", help="image WIDTHxHEIGHT")
    parser.add_argument("--requests", type=int, default=16, help="/predict requests for the throughput step")
    parser.add_argument("--callers", type=int, default=4, help="concurrent callers of the throughput step")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of 1 and of --callers callers")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for every prediction")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if min(args.tasks, args.batch_size, args.requests, args.callers, args.rounds) < 1 or args.deadline <= 0:
        parser.error("counts must be at least 1 and the deadline above 0")
    return args


def make_project(ls, args: argparse.Namespace) -> tuple[int, list[str]]:
    """A project of ``args.tasks`` JPEG tasks under Label Studio's document root; returns it and the files."""
    folder = ls.document_root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.lower().split("x"))
    names, _ = write_images(folder, args.tasks, height, width, seed=0)
    client = ls.client()
    project = client.create_project("bench retrieve", LABEL_CONFIG)
    client.create_local_storage(project, folder, use_blob_urls=False)
    client.import_tasks(project, [{"image": f"/data/local-files/?d={FOLDER}/{name}"} for name in names])
    return project, names


def retrieve(ls, backend, project: int, tasks: int, timeout: float) -> dict:
    """(a) and (b): one retrieve, then polling until every task holds the version's prediction."""
    client = ls.client()
    client.connect_ml_backend(project, backend.url, "hua-backend bench", user=backend.user, password=backend.password)
    warm = backend.post("/predict", json={"tasks": [], "project": project, "label_config": LABEL_CONFIG}, timeout=300)
    warm.raise_for_status()
    version = warm.json()["model_version"]
    started = time.monotonic()
    client.retrieve_predictions(project)
    answered = time.monotonic() - started
    held = at_answer = client.model_versions(project).get(version, 0)
    while held < tasks and time.monotonic() - started < timeout:
        time.sleep(POLL_S)
        held = client.model_versions(project).get(version, 0)
    done = time.monotonic() - started
    return {
        "version": version,
        "answer_s": answered,
        "all_s": done,
        "held": held,
        "at_answer": at_answer,
        "predict_job": _job_result(backend, project, timeout),
    }


def _job_result(backend, project: int, timeout: float) -> dict | None:
    """The predict job's result once it has finished (its last push comes just before), None without a job."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        record = backend.get("/jobs", timeout=30).json()["jobs"].get(str(project), {}).get("predict")
        if record is None or record["status"] in ("done", "failed"):
            return record and record["result"]
        time.sleep(POLL_S)
    return None


def bare(model_dir: Path, project: int, env: dict[str, str], images: list[torch.Tensor], batch_size: int) -> float:
    """(c): the version the service wrote, over the same images at the same batch size, in this process."""
    settings = Settings.from_env(env)
    version = VersionStore(model_dir).latest(str(project))
    detector = Detector(
        load_version_model(settings.detector_config("cpu"), version), version.meta.labels, torch.device("cpu")
    )
    detector.predict(images[:batch_size])  # warm-up, as the service's first /predict
    started = time.monotonic()
    for start in range(0, len(images), batch_size):
        detector.predict(images[start : start + batch_size])
    return time.monotonic() - started


def _predict_body(project: int, names: list[str], request: int, size: int) -> dict:
    """/predict of ``size`` tasks no ranking covers (ids Label Studio never gave), as Label Studio sends it."""
    first = request * size
    tasks = [
        {
            "id": 10_000_000 + first + i,
            "data": {"image": f"/data/local-files/?d={FOLDER}/{names[(first + i) % len(names)]}"},
        }
        for i in range(size)
    ]
    return {"project": project, "label_config": LABEL_CONFIG, "tasks": tasks}


def throughput(backend, project: int, names: list[str], args: argparse.Namespace, callers: int) -> float:
    """Images per second of ``args.requests`` /predict calls of BATCH_SIZE tasks, ``callers`` at a time."""
    queue = [_predict_body(project, names, r, args.batch_size) for r in range(args.requests)]
    lock = threading.Lock()

    def call() -> None:
        session = requests.Session()
        while True:
            with lock:
                if not queue:
                    return
                body = queue.pop()
            session.post(f"{backend.url}/predict", json=body, auth=backend.auth, timeout=600).raise_for_status()

    threads = [threading.Thread(target=call) for _ in range(callers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return args.requests * args.batch_size / (time.monotonic() - started)


def run(args: argparse.Namespace, base: Path) -> dict:
    ls = start_label_studio(ensure_ls_venv(), base / "ls")
    backend = None
    try:
        project, names = make_project(ls, args)
        env = {
            "BACKBONE": args.backbone,
            "PREDICT_DEADLINE": str(args.deadline),
            "BATCH_SIZE": str(args.batch_size),
            "SCORE_THRESHOLD": "0.5",
            "LOG_LEVEL": "INFO",
        }
        backend = start_ml_backend(ls, base / "models", base / "gunicorn.log", extra_env=env)
        figures = retrieve(ls, backend, project, args.tasks, args.timeout)
        one, many = [], []
        for _ in range(args.rounds):  # alternated, so that a burst of load elsewhere hits both
            one.append(throughput(backend, project, names, args, 1))
            many.append(throughput(backend, project, names, args, args.callers))
    finally:
        if backend is not None:
            backend.stop()
        ls.stop()
    images = decoded_tensors(ls.document_root / FOLDER, names)
    figures["bare_s"] = bare(
        base / "models", project, {**backend.env, "MODEL_DIR": str(base / "models")}, images, args.batch_size
    )
    return {
        **figures,
        "one_caller_ips": statistics.median(one),
        "many_callers_ips": statistics.median(many),
        "rounds": {"one": one, "many": many},
        "tasks": args.tasks,
        "deadline": args.deadline,
        "batch_size": args.batch_size,
        "backbone": args.backbone,
        "callers": args.callers,
        "load_average": os.getloadavg(),
    }


def report(f: dict) -> None:
    ratio, concurrency = f["all_s"] / f["bare_s"], f["many_callers_ips"] / f["one_caller_ips"]
    rows = [
        [
            "(a) Label Studio's answer",
            f"{f['answer_s']:.1f} s",
            f"<= {f['deadline'] + ANSWER_SLACK_S:.0f} s",
            fmt_goal(f["answer_s"] <= f["deadline"] + ANSWER_SLACK_S),
        ],
        [
            "(b) every task predicted",
            f"{f['all_s']:.1f} s ({f['at_answer']} held at the answer, {f['held']} of {f['tasks']} at the end)",
            "",
            "",
        ],
        ["(c) bare forward passes", f"{f['bare_s']:.1f} s", "", ""],
        ["(b) / (c)", f"{ratio:.3f}", "<= 1.15", fmt_goal(ratio <= 1.15 and f["held"] == f["tasks"])],
        [
            f"/predict, {f['callers']} callers / 1",
            f"{concurrency:.3f} ({f['many_callers_ips']:.2f} / {f['one_caller_ips']:.2f} images/s)",
            ">= 0.9",
            fmt_goal(concurrency >= 0.9),
        ],
    ]
    header = (
        f"N={f['tasks']} tasks, PREDICT_DEADLINE={f['deadline']:g} s, BATCH_SIZE={f['batch_size']}, "
        f"{f['backbone']}, load average {f['load_average'][0]:.2f}; predict job: {f['predict_job']}"
    )
    print_table(header, ["what", "measured", "goal", ""], rows)


def main(argv: list[str] | None = None) -> None:
    run_and_report("retrieve", parse_args(argv), run, report)


if __name__ == "__main__":
    main()
