"""Bucket-backed tasks against local-file tasks: "Retrieve predictions" over the same images, in one run.

On this machine, in one run:

1. Label Studio 1.23.2 (the test harness's venv and start-up), moto's S3 server on
   127.0.0.1 (tests/s3server.py) and the backend under gunicorn (BACKBONE,
   WEIGHTS=none). The same N JPEGs are written under Label Studio's document root
   and uploaded to a bucket. Project L imports them as local files; project C gets
   an S3 source storage on the bucket (``s3_endpoint`` set, presign on or off) and
   a sync (one ``s3://`` task per object). The backend is connected after the
   sync (no ranking exists: every task needs the model), and a /predict with no
   task loads each project's model before any timing.
2. One "Retrieve predictions" over each project, L then C: seconds from the
   action until every task holds a prediction of the version (Label Studio's
   answer, then the background predict job of the tasks not reached within
   PREDICT_DEADLINE). Ratio C / L.
3. A second "Retrieve predictions" over C, after deleting C's predictions (Label
   Studio sends only the tasks without a prediction of the current version): the
   objects downloaded from the bucket during it (GETs in the S3 server's request
   log). Goal: 0 (the image cache is keyed by the ``s3://`` URI, not by the
   presigned URL).

Usage (from the repository root)::

    .venv/bin/python -m bench.bench_cloud --tasks 500
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.bench_predict import write_images
from bench.common import fmt_goal, print_table, run_and_report

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))
from labelstudio import ensure_ls_venv, start_label_studio, start_ml_backend  # noqa: E402
from s3server import BUCKET, DEFAULT_KEYS, REGION, start_s3_server  # noqa: E402

FOLDER = "bench-cloud"
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
    '<Label value="car"/><Label value="person"/></RectangleLabels></View>'
)
POLL_S = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500, help="N tasks in each project")
    parser.add_argument(
        "--presign",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the storage's 'Use pre-signed URLs' (off: Label Studio proxies the bytes)",
    )
    parser.add_argument("--backbone", default="mobilenet_v3_320_fpn", help="BACKBONE")
    parser.add_argument("--size", default="320x240", help="image WIDTHxHEIGHT")
    parser.add_argument("--deadline", type=float, default=60.0, help="PREDICT_DEADLINE, seconds")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for every prediction")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.tasks < 1:
        parser.error("--tasks must be at least 1")
    return args


def make_projects(ls, s3_server, args: argparse.Namespace) -> tuple[int, int]:
    """Project L (local files) and project C (the bucket, synced) over the same JPEGs."""
    folder = ls.document_root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.lower().split("x"))
    names, _ = write_images(folder, args.tasks, height, width, seed=0)
    s3 = s3_server.client()
    s3.create_bucket(Bucket=BUCKET)
    for name in names:
        s3.put_object(Bucket=BUCKET, Key=name, Body=(folder / name).read_bytes(), ContentType="image/jpeg")
    client = ls.client()
    local = client.create_project("bench cloud: local files", LABEL_CONFIG)
    client.create_local_storage(local, folder, use_blob_urls=False)
    client.import_tasks(local, [{"image": f"/data/local-files/?d={FOLDER}/{name}"} for name in names])
    cloud = client.create_project("bench cloud: bucket", LABEL_CONFIG)
    body = {
        "project": cloud,
        "bucket": BUCKET,
        "prefix": "",
        "regex_filter": r".*\.jpg",
        "use_blob_urls": True,
        "presign": args.presign,
        "presign_ttl": 15,
        "region_name": REGION,
        "s3_endpoint": s3_server.url,
        **DEFAULT_KEYS,
    }
    storage = client.post("/api/storages/s3", json=body)["id"]
    info = client.post(f"/api/storages/s3/{storage}/sync")
    started = time.monotonic()
    while info.get("status") not in ("completed", "failed", "completed_with_errors"):
        if time.monotonic() - started > args.timeout:
            raise TimeoutError(f"sync still {info.get('status')}")
        time.sleep(POLL_S)
        info = client.get(f"/api/storages/s3/{storage}")
    if info["status"] != "completed" or info.get("last_sync_count") != args.tasks:
        raise RuntimeError(f"sync: {info.get('status')}, {info.get('last_sync_count')} tasks\n{info.get('traceback')}")
    return local, cloud


def retrieve(ls, backend, project: int, tasks: int, timeout: float) -> dict:
    """One "Retrieve predictions": seconds until Label Studio answers and until the background predict
    job (the tasks not reached within PREDICT_DEADLINE) has finished; predictions of the version added."""
    client = ls.client()
    warm = backend.post("/predict", json={"tasks": [], "project": project, "label_config": LABEL_CONFIG}, timeout=300)
    warm.raise_for_status()
    version = warm.json()["model_version"]
    before, job_before = client.model_versions(project).get(version, 0), _predict_job(backend, project)
    started = time.monotonic()
    client.retrieve_predictions(project)
    answered = time.monotonic() - started
    while time.monotonic() - started < timeout:
        job = _predict_job(backend, project)
        if job == job_before or (job or {}).get("status") in ("done", "failed"):  # none scheduled, or it ended
            break
        time.sleep(POLL_S)
    return {
        "seconds": time.monotonic() - started,
        "answer_s": answered,
        "added": client.model_versions(project).get(version, 0) - before,
        "job": _predict_job(backend, project),
    }


def _predict_job(backend, project: int) -> dict | None:
    """The project's predict job record (None before the first)."""
    return backend.get("/jobs", timeout=30).json()["jobs"].get(str(project), {}).get("predict")


def run(args: argparse.Namespace, base: Path) -> dict:
    ls = start_label_studio(ensure_ls_venv(), base / "ls")
    s3_server, backend = None, None
    try:
        s3_server = start_s3_server(base)
        local, cloud = make_projects(ls, s3_server, args)
        env = {
            "BACKBONE": args.backbone,
            "WEIGHTS": "none",
            "PREDICT_DEADLINE": str(args.deadline),
            "SCORE_THRESHOLD": "0.5",
            "LOG_LEVEL": "INFO",
        }
        backend = start_ml_backend(ls, base / "models", base / "gunicorn.log", extra_env=env)
        client = ls.client()
        for project in (local, cloud):
            client.connect_ml_backend(
                project, backend.url, "hua-backend bench", user=backend.user, password=backend.password
            )
        figures = {"local": retrieve(ls, backend, local, args.tasks, args.timeout)}
        gets = s3_server.object_gets(BUCKET)
        figures["cloud"] = retrieve(ls, backend, cloud, args.tasks, args.timeout)
        figures["first_downloads"] = s3_server.object_gets(BUCKET) - gets
        gets = s3_server.object_gets(BUCKET)
        # Label Studio sends only tasks without a prediction of the current version: delete them first
        client.post(
            "/api/dm/actions",
            params={"id": "delete_tasks_predictions", "project": cloud},
            json={"selectedItems": {"all": True, "excluded": []}},
        )
        figures["cloud_again"] = retrieve(ls, backend, cloud, args.tasks, args.timeout)
        figures["second_downloads"] = s3_server.object_gets(BUCKET) - gets
    finally:
        for server in (backend, s3_server, ls):
            if server is not None:
                server.stop()
    return {
        **figures,
        "tasks": args.tasks,
        "presign": args.presign,
        "backbone": args.backbone,
        "size": args.size,
        "load_average": os.getloadavg(),
    }


def report(f: dict) -> None:
    ratio = f["cloud"]["seconds"] / f["local"]["seconds"]
    rows = [
        [
            "L: local files, retrieve",
            f"{f['local']['seconds']:.1f} s ({f['local']['added']} of {f['tasks']} predicted)",
            "",
            "",
        ],
        [
            "C: bucket, retrieve",
            f"{f['cloud']['seconds']:.1f} s ({f['cloud']['added']} of {f['tasks']} predicted, "
            f"{f['first_downloads']} downloads)",
            "",
            "",
        ],
        ["C / L wall time", f"{ratio:.2f}", "", ""],
        [
            "C: second retrieve",
            f"{f['cloud_again']['seconds']:.1f} s ({f['cloud_again']['added']} predicted), "
            f"{f['second_downloads']} downloads",
            "0",
            fmt_goal(f["second_downloads"] == 0 and f["cloud_again"]["added"] == f["tasks"]),
        ],
    ]
    header = (
        f"N={f['tasks']} tasks of {f['size']}, presign {'on' if f['presign'] else 'off'}, {f['backbone']}, "
        f"load average {f['load_average'][0]:.2f}"
    )
    print_table(header, ["what", "measured", "goal", ""], rows)


def main(argv: list[str] | None = None) -> None:
    run_and_report("cloud", parse_args(argv), run, report)


if __name__ == "__main__":
    main()
