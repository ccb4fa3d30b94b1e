"""Load: N concurrent /predict clients for T seconds, with /health and /webhook polled alongside.

The backend runs under gunicorn (``docker/gunicorn.conf.py``, its defaults unless
given) on 127.0.0.1 only, with WEIGHTS=none (nothing downloaded) and JPEGs under
LOCAL_FILES_DOCUMENT_ROOT. Each client loops, one request after the other, until
the time is up (and at most ``--max-requests`` times): a /predict of one task,
whose image is a good JPEG, or, one call in ``--bad-every``, a missing image (the
task gets ``[]``) or a malformed body (400). Two more loops poll ``GET /health``
and ``POST /webhook`` (an action the backend acknowledges and ignores, so that no
job starts) every ``--poll-interval`` seconds.

Printed: per route, the calls, the errors (an answer other than the expected one:
200 for good and missing-image calls, 400 for malformed ones, 200 for the polls;
a 503 "busy" counts as an error), p50, p99 and max in seconds; and the gunicorn
workers' RSS before the load, every 10 s during it, and after. The issue's goal at
50 clients for 60 s: no error for good requests, /health and /webhook p99 under
1 s, RSS levelling off.

Usage (from the repository root)::

    .venv/bin/python -m bench.bench_load --clients 50 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench.bench_predict import LABEL_CONFIG, PROJECT, GunicornServer, free_port, write_images
from bench.common import backend_env

WEBHOOK = {"action": "PROJECT_UPDATED", "project": {"id": int(PROJECT)}}


@dataclass
class Calls:
    """Every call's route, whether its answer was the expected one, and its latency; shared by the loops."""

    samples: dict[str, list[tuple[bool, float]]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, route: str, ok: bool, seconds: float) -> None:
        with self.lock:
            self.samples[route].append((ok, seconds))


def _call(session: requests.Session, method: str, url: str, body: object, expected: int, timeout: float) -> bool:
    try:
        response = session.request(method, url, json=body, timeout=timeout)
    except requests.RequestException:
        return False
    return response.status_code == expected


def _predict_body(kind: str, name: str, task_id: int) -> object:
    if kind == "malformed":
        return {"tasks": "not a list", "project": PROJECT, "label_config": LABEL_CONFIG}
    image = "missing.jpg" if kind == "missing" else name
    task = {"id": task_id, "data": {"image": f"/data/local-files/?d={image}"}}
    return {"tasks": [task], "project": f"{PROJECT}.1700000000", "label_config": LABEL_CONFIG}


def client_loop(url: str, names: list[str], index: int, end: float, args: argparse.Namespace, calls: Calls) -> None:
    """One /predict client: good, missing-image and malformed calls in turn, until ``end``."""
    with requests.Session() as session:
        for n in range(args.max_requests):
            if time.monotonic() >= end:
                return
            turn = n + index
            kind = "good" if turn % args.bad_every else ("missing", "malformed")[(turn // args.bad_every) % 2]
            started = time.perf_counter()
            ok = _call(
                session,
                "POST",
                f"{url}/predict",
                _predict_body(kind, names[turn % len(names)], turn),
                400 if kind == "malformed" else 200,
                timeout=300,
            )
            calls.add(f"/predict ({kind})", ok, time.perf_counter() - started)


def poll_loop(url: str, route: str, end: float, interval: float, calls: Calls) -> None:
    """GET /health or POST /webhook every ``interval`` seconds until ``end``."""
    method, body = ("POST", WEBHOOK) if route == "/webhook" else ("GET", None)
    with requests.Session() as session:
        while time.monotonic() < end:
            started = time.perf_counter()
            ok = _call(session, method, f"{url}{route}", body, 200, timeout=30)
            calls.add(route, ok, time.perf_counter() - started)
            time.sleep(max(0.0, interval - (time.perf_counter() - started)))


def worker_rss_mib(master: int) -> dict[int, float]:
    """RSS (MiB) of each gunicorn worker: the children of the master process."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == master:
                status = (stat.parent / "status").read_text()
                found[int(stat.parent.name)] = int(status.split("VmRSS:")[1].split()[0]) / 1024
        except (OSError, IndexError, ValueError):
            continue
    return found


def run_load(
    server: GunicornServer, names: list[str], args: argparse.Namespace
) -> tuple[Calls, list[tuple[float, dict]]]:
    """The clients and the polls for ``args.seconds``; returns the calls and the RSS samples over time."""
    calls, rss = Calls(), [(0.0, worker_rss_mib(server.process.pid))]
    start = time.monotonic()
    end = start + args.seconds
    loops = [
        threading.Thread(target=client_loop, args=(server.url, names, i, end, args, calls)) for i in range(args.clients)
    ]
    loops += [
        threading.Thread(target=poll_loop, args=(server.url, route, end, args.poll_interval, calls))
        for route in ("/health", "/webhook")
    ]
    for loop in loops:
        loop.start()
    while any(loop.is_alive() for loop in loops):
        time.sleep(min(10.0, max(0.1, end - time.monotonic())))
        if time.monotonic() - start - rss[-1][0] >= 10.0 or not any(loop.is_alive() for loop in loops):
            rss.append((round(time.monotonic() - start, 1), worker_rss_mib(server.process.pid)))
    return calls, rss


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] if len(values) > 1 else values[0]


def summary(calls: Calls) -> list[dict]:
    rows = []
    for route, samples in sorted(calls.samples.items()):
        seconds = [s for _, s in samples]
        rows.append(
            {
                "route": route,
                "calls": len(samples),
                "errors": sum(1 for ok, _ in samples if not ok),
                "p50": quantile(seconds, 0.5),
                "p99": quantile(seconds, 0.99),
                "max": max(seconds),
            }
        )
    return rows


def print_report(rows: list[dict], rss: list[tuple[float, dict]], args: argparse.Namespace) -> None:
    print(
        f"{args.clients} /predict clients for {args.seconds} s, {args.backbone}, {args.image_size} JPEGs, "
        f"WORKERS={args.workers} THREADS={args.threads} LIGHT_THREADS={args.light_threads}, "
        f"load average now {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    print(f"{'route':<24} {'calls':>7} {'errors':>7} {'p50 s':>8} {'p99 s':>8} {'max s':>8}")
    for r in rows:
        print(f"{r['route']:<24} {r['calls']:>7} {r['errors']:>7} {r['p50']:>8.3f} {r['p99']:>8.3f} {r['max']:>8.3f}")
    print(
        "worker RSS (MiB) at t seconds: "
        + "; ".join(f"t={t}: " + ", ".join(f"{v:.0f}" for v in sample.values()) for t, sample in rss)
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-requests", type=int, default=100_000, help="per client, a bound on its loop")
    parser.add_argument("--bad-every", type=int, default=5, help="one call in this many is a bad one")
    parser.add_argument("--poll-interval", type=float, default=0.25)
    parser.add_argument("--backbone", default="mobilenet_v3_320_fpn")
    parser.add_argument("--image-size", default="240x320", help="HEIGHTxWIDTH of the JPEGs")
    parser.add_argument("--workers", default="1")
    parser.add_argument("--threads", default="64")
    parser.add_argument("--light-threads", default="4")
    parser.add_argument("--torch-threads", default=str(len(os.sched_getaffinity(0))))
    parser.add_argument("--out", type=Path, help="also write the rows and RSS samples as JSON")
    args = parser.parse_args(argv)
    args.height, args.width = (int(v) for v in args.image_size.lower().split("x"))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        doc_root = Path(tmp) / "files"
        doc_root.mkdir()
        names, _ = write_images(doc_root, 16, args.height, args.width, seed=0)
        env = backend_env(
            free_port(),
            Path(tmp) / "models",
            args.backbone,
            WORKERS=args.workers,
            THREADS=args.threads,
            LIGHT_THREADS=args.light_threads,
            BATCH_SIZE="8",
            LOCAL_FILES_DOCUMENT_ROOT=str(doc_root),
            LOG_LEVEL="WARNING",
            OMP_NUM_THREADS=args.torch_threads,
            MKL_NUM_THREADS=args.torch_threads,
        )
        server = GunicornServer.start(env, Path(tmp) / "gunicorn.log")
        try:
            server.predict(names[:1])  # the first version, made before the clock starts
            calls, rss = run_load(server, names, args)
        finally:
            server.stop()
    rows = summary(calls)
    print_report(rows, rss, args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"config": vars(args), "rows": rows, "rss": rss}, indent=2, default=str))


if __name__ == "__main__":
    main()
