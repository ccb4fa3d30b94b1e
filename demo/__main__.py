"""``make demo`` (``python -m demo``): watch the backend learn, on a CPU, in 15 to 20 minutes.

It starts Label Studio (its own venv, as the end-to-end tests do) and the backend on loopback,
creates a project of 60 digit scenes from bench/ and connects the backend. Then a scripted
annotator (demo/annotator.py) labels the head of the "HUA queue" tab with the ground truth, 10
tasks at a time (the first batch, before any model is trained, by task id), waiting after each
batch for the training and the ranking it triggers, until ``--trainings`` trainings have run.
It prints Label Studio's URL and login and the backend's /ui with its basic-auth pair at the
start, a line per training, and takes a screenshot of /ui at the end. Then it keeps both servers
up until Ctrl-C (``--exit``: stop at once).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from demo.annotator import Annotator, DemoError
from demo.labelstudio import (
    REPO_ROOT,
    LabelStudioServer,
    MLBackendServer,
    ensure_ls_venv,
    free_port,
    start_label_studio,
    start_ml_backend,
)
from demo.scenes import LABEL_CONFIG, SCENES, write_scenes

USERNAME = "demo@example.com"
BACKEND_USER = "ml"
SUBDIR = "demo-scenes"
MARKER = ".hua-demo"  # a folder --workdir may empty
DEFAULT_WORKDIR = REPO_ROOT / ".cache" / "demo"

#: The backend's settings for a CPU (README's table lists them all): torchvision's ImageNet
#: MobileNetV2 file from .cache/torch (``make weights``) under an FPN; a training every 10
#: annotations, 80 steps of 2 images, each fine-tuning the serving version; the gate passes half
#: the unlabeled scenes (at least 10) to the mirrored pass; pre-annotations from a score of 0.3
#: (rather than 0.5), as a model this young is rarely surer. Torch gets all CPUs but one, which is
#: left to Label Studio: on 2 CPUs two threads per job ran 3x slower than one (measured).
BACKEND_SETTINGS = {
    "BACKBONE": "mobilenet_v2_fpn",
    "WEIGHTS": "imagenet",
    "ALLOW_WEIGHTS_DOWNLOAD": "false",
    "DEVICE": "cpu",
    "TRAIN_EVERY": "10",
    "TRAIN_ITERATIONS": "80",
    "TRAIN_BATCH_SIZE": "2",
    "HUA_MIN_CANDIDATES": "10",
    "SCORE_THRESHOLD": "0.3",
    "LOG_LEVEL": "INFO",
}


def _port(preferred: int) -> int:
    """``preferred`` when it is free on 127.0.0.1, else any free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def _say(text: str) -> None:
    print(text, flush=True)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def _figures(backend: MLBackendServer, project: int) -> list[dict]:
    response = backend.get(f"/projects/{project}/report", timeout=60)
    response.raise_for_status()
    return response.json()["versions"]


def _curve(versions: list[dict]) -> str:
    measured = [v for v in versions if v["figures"]]
    return ", ".join(f"{v['model_version']} {100 * v['figures']['map_50']:.1f}" for v in measured) or "none yet"


def screenshot(backend: MLBackendServer, project: int, path: Path) -> Path:
    """/ui at 1280 px wide in Debian's headless Chromium (Playwright), the project's section, as a small PNG."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        raise DemoError(f"{chromium} is missing: `make chromium` installs it")
    path.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            context = browser.new_context(
                http_credentials={"username": backend.user, "password": backend.password},
                viewport={"width": 1280, "height": 800},
            )
            page = context.new_page()
            page.goto(f"{backend.url}/ui")
            page.wait_for_function(
                "sel => { const i = document.querySelector(sel); return i !== null && i.naturalWidth > 0; }",
                arg=f"#project-{project} img.plot",
                timeout=30_000,
            )
            page.locator(f"#project-{project}").screenshot(path=str(path))
        finally:
            browser.close()
    # A palette of 256 colours keeps the page's flat colours and text, at a fraction of the size.
    with Image.open(path) as image:
        image.convert("RGB").quantize(colors=256).save(path, optimize=True)
    return path


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the servers are stopped on the way out
    work = Path(args.workdir).resolve()
    ours = work == DEFAULT_WORKDIR.resolve() or (work / MARKER).exists()
    if work.exists() and any(work.iterdir()) and not ours:
        _say(f"{work} is not empty and not a demo's folder: give --workdir an empty or new one")
        return 2
    shutil.rmtree(work, ignore_errors=True)  # the last demo's
    work.mkdir(parents=True)
    (work / MARKER).write_text("made by python -m demo; emptied by the next one\n")
    _say("Label Studio's venv (the end-to-end tests' one; the first time, pip installs it: minutes) ...")
    venv = ensure_ls_venv()
    _say(f"Starting Label Studio (its first start on a fresh data dir migrates: about a minute) in {work} ...")
    ls: LabelStudioServer | None = None
    backend: MLBackendServer | None = None
    try:
        ls = start_label_studio(
            venv, work / "label-studio", port=_port(args.ls_port), username=USERNAME, password=args.password
        )
        client = ls.client()
        backend = start_ml_backend(
            ls,
            work / "models",
            work / "backend.log",
            port=_port(args.backend_port),
            extra_env={
                **BACKEND_SETTINGS,
                "TORCH_HOME": str(REPO_ROOT / ".cache" / "torch"),
                "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) - 1)),
                "TRAIN_ITERATIONS": str(args.iterations),
                "TRAIN_EVERY": str(args.batch),
                "BASIC_AUTH_USER": BACKEND_USER,
                "BASIC_AUTH_PASS": secrets.token_urlsafe(12),
            },
        )
        scenes = write_scenes(ls.document_root, SUBDIR)
        project = client.create_project(
            "HUA demo: digit scenes",
            LABEL_CONFIG,
            description=f"{len(scenes)} scenes of MNIST digits from bench/active_learning (CC BY-SA 3.0)",
        )
        client.create_local_storage(project, ls.document_root / SUBDIR, use_blob_urls=False, title="demo scenes")
        client.import_tasks(project, [s.task() for s in scenes])
        client.connect_ml_backend(project, backend.url, "HUA backend", user=backend.user, password=backend.password)
        _say(
            "\n"
            f"  Label Studio  {ls.url}/projects/{project}/data   login {ls.username} / {ls.password}\n"
            f"  backend /ui   {backend.url}/ui   basic auth {backend.user} / {backend.password}\n"
            f"  (set up in {_minutes(time.monotonic() - t0)}; logs: {ls.log_path}, {backend.log_path})\n"
        )
        annotator = Annotator(client, backend, project, {s.name: s for s in scenes}, args.batch, _say)
        t_learn = time.monotonic()
        for training in range(1, args.trainings + 1):
            _say(f"Batch {training}:")
            annotator.cycle()
            versions = _figures(backend, project)
            serving = versions[-1]["model_version"]
            _say(
                f"  training {training} done at {_minutes(time.monotonic() - t0)}: serving {serving};"
                f" AP50 (%) measured so far: {_curve(versions)}"
            )
        elapsed = time.monotonic() - t0
        _say(
            f"\n{args.trainings} trainings in {_minutes(time.monotonic() - t_learn)} of labeling,"
            f" {_minutes(elapsed)} in all (on {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})."
        )
        if args.screenshot:
            _say(f"Screenshot of /ui: {screenshot(backend, project, Path(args.screenshot))}")
        if args.exit:
            return 0
        _say(
            f"\nStill serving: Label Studio {ls.url} ({ls.username} / {ls.password}),"
            f" /ui {backend.url}/ui ({backend.user} / {backend.password}). Ctrl-C stops both."
        )
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
        return 0
    except DemoError as error:
        _say(f"demo stopped: {error}")
        return 1
    finally:
        for server in (backend, ls):
            if server is not None:
                server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="a demo's folder, emptied first")
    parser.add_argument("--ls-port", type=int, default=8080, help="any free port when taken")
    parser.add_argument("--backend-port", type=int, default=9090, help="any free port when taken")
    parser.add_argument("--password", default=None, help="Label Studio's (default: random, printed)")
    parser.add_argument("--batch", type=int, default=10, help="tasks per batch (TRAIN_EVERY)")
    parser.add_argument("--trainings", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=int(BACKEND_SETTINGS["TRAIN_ITERATIONS"]))
    parser.add_argument(
        "--screenshot", default=str(REPO_ROOT / ".cache" / "demo-ui.png"), help="where /ui's picture goes ('': none)"
    )
    parser.add_argument("--exit", action="store_true", help="stop the servers at the end")
    args = parser.parse_args(argv)
    if args.batch * (args.trainings + 1) > SCENES.pool_images:
        parser.error(f"{args.trainings} batches of {args.batch} need more than {SCENES.pool_images} scenes")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
