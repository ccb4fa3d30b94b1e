"""Service overhead of /predict: the bare forward pass against the HTTP round trip.

In one run, side by side and interleaved (each round times (a) and (b) back to
back, in the order a-b, then b-a, ...), for each batch size N:

(a) bare: ``model.detector.Detector.predict`` on N float tensors that are already
    decoded, in this process (what the service does after decoding);
(b) service: ``POST /predict`` with N tasks, over real HTTP, to the backend under
    gunicorn (``docker/gunicorn.conf.py``) in a subprocess. The tasks point at JPEG
    files under LOCAL_FILES_DOCUMENT_ROOT (``/data/local-files/?d=<name>.jpg``), so
    (b) also pays what the service really has to do around the model: request JSON
    and label-config parsing, reading and decoding the JPEGs (fetch thread pool,
    EXIF transpose, RGB), ``image_tensor``, building the answer and its JSON, HTTP.

Both run the identical model: the service creates its first version from
WEIGHTS=none on the first /predict, and the bare detector is built from that very
``MODEL_DIR/<project>/v0001/weights.pt`` with the DetectorConfig the service derives
from the same environment; the run checks that both give the same task scores.

Torch threads: the backend has no setting for torch's thread count, so the
gunicorn worker gets OMP_NUM_THREADS (and MKL_NUM_THREADS) and this process calls
``torch.set_num_threads`` with the same count. (a) and (b) never run at the same
time, so each has every core while it is measured.

The table gives medians and the overhead (b - a) / a, plus two cross-checks for
a noisy machine: the median of the paired ratios b_i / a_i, and the fastest call
of each. Expect several percent of run-to-run spread on a shared 2-core VM: use
more --repeats (40 resolve batch 8 to a few percent), and read the load average
printed with the table.

Usage (from the repository root)::

    .venv/bin/python -m bench.bench_predict --batch-sizes 1 8 --repeats 5

The issue's goal: overhead (b - a) / a at most 10 % at batch 8 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image
from torch import Tensor

from backend.settings import Settings
from bench.common import backend_env
from model.detector import Detector
from model.hua import HUAConfig, entropy_score, image_entropy
from model.images import load_image
from model.registry import load_version_model
from model.versions import VersionStore

REPO_ROOT = Path(__file__).resolve().parent.parent
MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist_digits_10k.npz"
PROJECT = "1"
LABELS = [str(d) for d in range(10)]
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="label" toName="image">'
    + "".join(f'<Label value="{label}"/>' for label in LABELS)
    + "</RectangleLabels></View>"
)
JPEG_QUALITY = 90
SCORE_TOLERANCE = 1e-3


# --- images -------------------------------------------------------------------------


def _digit_source(seed: int) -> tuple[np.ndarray | None, str]:
    """MNIST digits when the shared data set is beside the repository, else None."""
    if MNIST.is_file():
        return np.load(MNIST)["images"], f"MNIST digits from {MNIST.name}"
    return None, "random rectangles (no MNIST file found)"


def make_scene(rng: np.random.Generator, height: int, width: int, digits: np.ndarray | None) -> Image.Image:
    """A cluttered RGB scene: a shaded, noisy background and 4-10 pasted objects.

    Objects are scaled MNIST digits in random colours when ``digits`` is given, or
    filled rectangles otherwise; either way JPEG size and decode cost are those of a
    photo-like image rather than of flat colour or pure noise.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    tilt = rng.uniform(-60, 60, size=3)
    canvas = base + tilt * (xx / width)[..., None] + tilt[::-1] * (yy / height)[..., None]
    canvas += rng.normal(0, 8, size=canvas.shape)
    for _ in range(int(rng.integers(4, 11))):
        size = int(rng.integers(height // 12, height // 3))
        y, x = int(rng.integers(0, height - size)), int(rng.integers(0, width - size))
        colour = rng.uniform(0, 255, size=3)
        if digits is not None:
            glyph = Image.fromarray(digits[int(rng.integers(len(digits)))]).resize((size, size), Image.BILINEAR)
            alpha = np.asarray(glyph, dtype=np.float32)[..., None] / 255.0
        else:
            alpha = np.ones((size, int(size * rng.uniform(0.5, 1.0)), 1), dtype=np.float32)
        h, w = alpha.shape[:2]
        patch = canvas[y : y + h, x : x + w]
        canvas[y : y + h, x : x + w] = patch * (1 - alpha) + colour * alpha
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")


def write_images(root: Path, count: int, height: int, width: int, seed: int) -> tuple[list[str], str]:
    """``count`` JPEG scenes under ``root``; returns their file names and the object source."""
    rng = np.random.default_rng(seed)
    digits, source = _digit_source(seed)
    names = []
    for i in range(count):
        name = f"bench_{i:03d}.jpg"
        make_scene(rng, height, width, digits).save(root / name, quality=JPEG_QUALITY)
        names.append(name)
    return names, source


def decoded_tensors(root: Path, names: list[str]) -> list[Tensor]:
    """The images as (a) gets them: decoded once, outside any timing."""
    return [load_image(str(root / name)) for name in names]


# --- the service under gunicorn ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class GunicornServer:
    """A running gunicorn with the backend, and where its log goes."""

    url: str
    process: subprocess.Popen
    log_path: Path
    session: requests.Session = field(default_factory=requests.Session)

    @classmethod
    def start(cls, env: dict[str, str], log_path: Path, timeout_s: float = 120.0) -> GunicornServer:
        gunicorn = Path(sys.executable).parent / "gunicorn"
        cmd = [str(gunicorn), "-c", "docker/gunicorn.conf.py", "backend.app:create_app()"]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = cls(f"http://{env['HOST']}:{env['PORT']}", proc, log_path)
        server.wait_ready(timeout_s)
        return server

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}; see {self.log_path}")
            try:
                if self.session.get(f"{self.url}/health", timeout=2).ok:
                    return
            except requests.RequestException:  # not listening yet, or the worker still importing torch
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn not ready after {timeout_s} s; see {self.log_path}")

    def predict(self, names: list[str]) -> dict:
        """POST /predict for one task per image; raises unless every task got a prediction."""
        tasks = [{"id": i + 1, "data": {"image": f"/data/local-files/?d={name}"}} for i, name in enumerate(names)]
        body = {"tasks": tasks, "project": f"{PROJECT}.1700000000", "label_config": LABEL_CONFIG}
        response = self.session.post(f"{self.url}/predict", json=body, timeout=300)
        response.raise_for_status()
        answer = response.json()
        if len(answer["results"]) != len(names) or any(r["score"] is None for r in answer["results"]):
            raise RuntimeError(f"/predict did not predict every task; see {self.log_path}")
        return answer

    def stop(self) -> None:
        self.session.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


# --- the bare model -----------------------------------------------------------------


def bare_detector(env: dict[str, str]) -> Detector:
    """The service's first version, loaded as the service would load it, on the CPU."""
    settings = Settings.from_env(env)
    version = VersionStore(settings.model_dir).latest(PROJECT)
    if version is None:
        raise RuntimeError("the service wrote no model version")
    model = load_version_model(settings.detector_config("cpu"), version)
    return Detector(model, version.meta.labels, torch.device("cpu"))


def check_same_model(detector: Detector, tensors: list[Tensor], answer: dict, display_threshold: float) -> None:
    """Task scores and box counts of (a) must be those of (b): same weights, same pixels.

    (b) shows annotators the boxes from ``display_threshold`` (SCORE_THRESHOLD); the
    detector returns more, down to HUA's analysis threshold.
    """
    for det, result in zip(detector.predict(tensors), answer["results"]):
        score, shown = entropy_score(image_entropy(det, HUAConfig())), len(det.above(display_threshold).boxes)
        if abs(score - result["score"]) > SCORE_TOLERANCE or shown != len(result["result"]):
            raise RuntimeError(
                f"bare and service disagree (score {score:.5f} vs {result['score']:.5f}, "
                f"boxes {shown} vs {len(result['result'])}): not the same model or input"
            )


# --- measurement --------------------------------------------------------------------


SETTLE_S = 0.3
"""Pause before each timed call: after a forward pass, the OpenMP threads of the
process that ran it spin for a while before they sleep, and on 2 cores they take
CPU from the other process's call that starts right after (measured: +20 % on (b)
without the pause). The backend in production has no such neighbour."""


def _timed(fn) -> float:
    time.sleep(SETTLE_S)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(
    detector: Detector,
    server: GunicornServer,
    tensors: list[Tensor],
    names: list[str],
    batch_sizes: list[int],
    repeats: int,
    warmup: int,
) -> dict[int, dict[str, list[float]]]:
    """Wall seconds per call of (a) and (b) for each batch size, taken alternately.

    Each round measures (a) and (b) back to back, in turn a-b and b-a (so that
    neither always runs right after the other): sample i of (a) and of (b) are a
    pair taken under the same conditions.
    """
    samples = {n: {"bare": [], "service": []} for n in batch_sizes}
    for rep in range(warmup + repeats):
        for n in batch_sizes:
            if rep % 2 == 0:
                bare = _timed(lambda n=n: detector.predict(tensors[:n]))
                served = _timed(lambda n=n: server.predict(names[:n]))
            else:
                served = _timed(lambda n=n: server.predict(names[:n]))
                bare = _timed(lambda n=n: detector.predict(tensors[:n]))
            if rep >= warmup:
                samples[n]["bare"].append(bare)
                samples[n]["service"].append(served)
    return samples


def summarise(samples: dict[int, dict[str, list[float]]]) -> list[dict]:
    """Per batch size: medians, the overhead of (b) over (a), and two cross-checks.

    ``paired_overhead_pct`` is the median over rounds of b_i / a_i - 1 (each pair
    measured back to back, so slow drifts of the machine cancel); ``min_*`` use
    the fastest call of each, which noise can only slow down.
    """
    rows = []
    for n, runs in samples.items():
        bare, served = statistics.median(runs["bare"]), statistics.median(runs["service"])
        paired = statistics.median(b / a for a, b in zip(runs["bare"], runs["service"]))
        rows.append(
            {
                "batch_size": n,
                "bare_s": bare,
                "service_s": served,
                "ratio": served / bare,
                "overhead_pct": 100.0 * (served - bare) / bare,
                "overhead_ms_per_image": 1000.0 * (served - bare) / n,
                "paired_overhead_pct": 100.0 * (paired - 1.0),
                "bare_min_s": min(runs["bare"]),
                "service_min_s": min(runs["service"]),
                "min_overhead_pct": 100.0 * (min(runs["service"]) - min(runs["bare"])) / min(runs["bare"]),
            }
        )
    return rows


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    print(
        f"{'batch':>5}  {'(a) bare ms':>11}  {'(b) /predict ms':>15}  {'b/a':>6}  {'overhead':>8}  "
        f"{'ms/img':>7}  | {'paired':>7}  | {'min (a)':>7}  {'min (b)':>7}  {'overhead':>8}"
    )
    for r in rows:
        print(
            f"{r['batch_size']:>5}  {1000 * r['bare_s']:>11.1f}  {1000 * r['service_s']:>15.1f}  "
            f"{r['ratio']:>6.3f}  {r['overhead_pct']:>7.1f}%  {r['overhead_ms_per_image']:>7.1f}  "
            f"| {r['paired_overhead_pct']:>6.1f}%  "
            f"| {1000 * r['bare_min_s']:>7.1f}  {1000 * r['service_min_s']:>7.1f}  {r['min_overhead_pct']:>7.1f}%"
        )
    print(
        "(a) = Detector.predict on already-decoded float tensors, in this process.\n"
        "(b) = POST /predict over HTTP to gunicorn: request/answer JSON, reading + JPEG decoding + image_tensor\n"
        "      (decode cost is in (b) only), the same model. Medians; overhead = (b - a) / a; ms/img = (b - a) / N.\n"
        "paired = median over rounds of b_i / a_i - 1 (each pair back to back); min = fastest call of each.\n"
        "      Both are cross-checks for a noisy machine: trust the overhead only where the three agree."
    )


# --- command line -------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="mobilenet_v3_320_fpn")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first (default 2)")
    parser.add_argument("--image-size", default="480x640", help="HEIGHTxWIDTH of the JPEGs (default 480x640)")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads in both processes (default: the CPUs available)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the samples and the summary as JSON")
    args = parser.parse_args(argv)
    args.height, args.width = (int(v) for v in args.image_size.lower().split("x"))
    return args


def run(args: argparse.Namespace, tmp: Path) -> dict:
    doc_root, model_dir = tmp / "files", tmp / "models"
    doc_root.mkdir()
    names, source = write_images(doc_root, max(args.batch_sizes), args.height, args.width, args.seed)
    tensors = decoded_tensors(doc_root, names)
    threads = str(args.torch_threads)
    # one request at a time: 2 threads for /predict, 2 kept for the light routes (LIGHT_THREADS < THREADS)
    env = backend_env(
        free_port(),
        model_dir,
        args.backbone,
        SCORE_THRESHOLD="0.5",
        THREADS="4",
        LIGHT_THREADS="2",
        BATCH_SIZE="8",
        LOCAL_FILES_DOCUMENT_ROOT=str(doc_root),
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
    )
    server = GunicornServer.start(env, tmp / "gunicorn.log")
    try:
        server.predict(names[:1])  # creates MODEL_DIR/<project>/v0001 from WEIGHTS=none
        detector = bare_detector(env)
        check_same_model(detector, tensors, server.predict(names), Settings.from_env(env).display_threshold)
        samples = measure(detector, server, tensors, names, args.batch_sizes, args.repeats, args.warmup)
    finally:
        server.stop()
    return {"samples": samples, "rows": summarise(samples), "images": source}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        result = run(args, Path(tmp))
    result["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    header = (
        f"/predict overhead, {args.backbone}, {args.height}x{args.width} JPEG q{JPEG_QUALITY} "
        f"({result['images']}), CPU, {args.torch_threads} torch threads, "
        f"{args.repeats} interleaved repeats after {args.warmup} warm-up rounds\n"
        f"load average (1 min) before {load_before:.2f}, after {result['load_average_1min']['after']:.2f} "
        f"on {os.cpu_count()} CPUs (this run itself adds about {args.torch_threads})"
    )
    print_table(result["rows"], header)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in vars(args).items() if k != "out"}
        args.out.write_text(json.dumps({"config": config, **result}, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
