"""The bulk push of a ranking into a real Label Studio: predictions per second at N predictions.

In one run: Label Studio 1.23.2 (the end-to-end tests' venv and start-up, demo/labelstudio.py) on
loopback, a project of N tasks, then what the last reduce of a ranking does
(``backend/jobs/rank.py``, ``RankingJob._push``): the version's predictions deleted, N predictions
(one box each, a task score) imported in requests of 1,000 with ``backend.lsclient``, the
project's model version set. Printed: seconds and predictions per second of the import, and of
the deletion of the same N (what a full re-ranking does first).

Usage (from the repository root)::

    .venv/bin/python -m bench.bench_ls_push --predictions 10000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from backend.lsclient import LabelStudioAuth, LabelStudioClient
from bench.common import label_config, print_table, run_and_report
from demo.labelstudio import ensure_ls_venv, start_label_studio

VERSION = "v0002"


def _prediction(task_id: int) -> dict:
    box = {"x": 10.0, "y": 20.0, "width": 30.0, "height": 25.0, "rotation": 0, "rectanglelabels": ["circle"]}
    result = [{"from_name": "label", "to_name": "image", "type": "rectanglelabels", "value": box, "score": 0.9}]
    return {"task": task_id, "result": result, "score": 0.5, "model_version": VERSION}


def run(args: argparse.Namespace, folder: Path) -> dict:
    server = start_label_studio(ensure_ls_venv(), folder)
    try:
        ls = server.client()
        project = ls.create_project("bulk push", label_config())
        tasks = [{"image": f"/data/local-files/?d=scene_{i:05d}.png"} for i in range(args.predictions)]
        start = time.monotonic()
        for i in range(0, len(tasks), 1000):
            ls.import_tasks(project, tasks[i : i + 1000])
        import_tasks_s = time.monotonic() - start
        client = LabelStudioClient(LabelStudioAuth(server.url, server.token), timeout=600)
        ids = sorted(t["id"] for t in client.tasks(project))
        body = [_prediction(task_id) for task_id in ids]
        start = time.monotonic()
        created = client.import_predictions(project, body)
        client.set_model_version(project, VERSION)
        push_s = time.monotonic() - start
        start = time.monotonic()
        client.delete_version_predictions(project, VERSION)
        delete_s = time.monotonic() - start
    finally:
        server.stop()
    return {
        "predictions": args.predictions,
        "created": created,
        "import_tasks_s": import_tasks_s,
        "push_s": push_s,
        "push_per_s": created / push_s,
        "delete_s": delete_s,
        "delete_per_s": created / delete_s,
    }


def report(f: dict) -> None:
    print_table(
        f"Bulk push of {f['predictions']:,} predictions into Label Studio 1.23.2 (requests of 1,000)",
        ["figure", "value"],
        [
            ["predictions created", f"{f['created']:,}"],
            ["import + model version (s)", f"{f['push_s']:.1f}"],
            ["predictions per second", f"{f['push_per_s']:.0f}"],
            ["delete the version's predictions (s)", f"{f['delete_s']:.1f}"],
            ["(importing the tasks themselves, s)", f"{f['import_tasks_s']:.1f}"],
        ],
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=10_000)
    parser.add_argument("--out", help="write the figures as JSON here")
    return run_and_report("ls-push", parser.parse_args(argv), run, report)


if __name__ == "__main__":
    main()
