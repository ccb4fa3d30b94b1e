"""Shared test helpers: a label config, small images, Settings for tests and a
tiny local HTTP server (a stand-in for Label Studio or an image host).

Nothing here downloads anything; every server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import io
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

from backend.settings import Settings

LABELS = ("car", "person")
FROM_NAME = "label"
TO_NAME = "image"
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="label" toName="image">'
    '<Label value="car"/><Label value="person"/>'
    "</RectangleLabels></View>"
)
# A valid config that has no RectangleLabels: the backend cannot serve it.
CHOICES_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="choice" toName="image"><Choice value="cat"/></Choices></View>'
)
EXIF_ORIENTATION = 0x0112

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def make_settings(model_dir: Path | str, **overrides) -> Settings:
    """Settings for a small real model on the CPU that never downloads weights."""
    values = dict(
        backbone="mobilenet_v3_320_fpn",
        weights="none",
        allow_weights_download=False,
        display_threshold=0.0,
        device="cpu",
        model_dir=str(model_dir),
        batch_size=2,
        fetch_workers=2,
        fetch_timeout=5.0,
        max_image_pixels=100_000,
        train_min_iterations=1,  # trainings of EPOCHS passes only: the tests check mechanics, not learning
    )
    values.update(overrides)
    settings = Settings(**values)
    settings.validate()
    return settings


def image_bytes(width: int, height: int, colour: tuple[int, int, int] = (90, 120, 30), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(
    path: Path, width: int, height: int, colour: tuple[int, int, int] = (90, 120, 30), fmt: str = "PNG"
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(width, height, colour, fmt))
    return path


def write_exif_rotated_jpeg(path: Path, width: int, height: int, orientation: int = 6) -> Path:
    """A JPEG whose stored pixels are ``width`` x ``height``, left half red and
    right half blue, tagged with an EXIF orientation (6: display rotated 90
    degrees clockwise, so a viewer shows ``height`` x ``width``, red on top)."""
    img = Image.new("RGB", (width, height), BLUE)
    img.paste(RED, (0, 0, width // 2, height))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def local_task(task_id: int, name: str) -> dict:
    """A task whose image is a Label Studio local-files URL (``?d=`` relative to the document root)."""
    return {"id": task_id, "data": {"image": f"/data/local-files/?d={name}"}}


def predict_body(tasks: list[dict], project: object = "1.1700000000", label_config: object = LABEL_CONFIG) -> dict:
    return {"tasks": tasks, "project": project, "label_config": label_config, "params": {"context": None}}


@dataclass
class Seen:
    """A request the local server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Route:
    status: int
    body: bytes
    content_type: str = "application/octet-stream"
    location: str = ""  # a Location header, for redirects


@dataclass
class LocalServer:
    """A threaded http.server on 127.0.0.1 that answers from ``routes``.

    ``routes`` maps a path (query string excluded) to a ``Route``, or to a
    callable ``(Seen) -> Route`` for answers that depend on the request.
    Everything received is recorded in ``seen``.
    """

    routes: dict = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
                server.seen.append(seen)
                route = server.routes.get(self.path.split("?")[0], Route(404, b"not found", "text/plain"))
                if callable(route):
                    route = route(seen)
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(route.body)))
                if route.location:
                    self.send_header("Location", route.location)
                self.end_headers()
                try:
                    self.wfile.write(route.body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.netloc}"

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# The images under the session document root (see conftest.image_root): name -> (displayed width, height).
WIDE = "wide.png"  # 200 x 100
SMALL = "small.jpg"  # 64 x 48
ROTATED = "rotated.jpg"  # stored 60 x 40 with EXIF orientation 6: displayed 40 x 60
TEXT = "notes.png"  # a text file with an image's extension
HUGE = "huge.png"  # 400 x 300 = 120,000 pixels, over make_settings' 100,000
OUTSIDE = "secret.png"  # a real image one level ABOVE the document root
DISPLAYED_SIZE = {WIDE: (200, 100), SMALL: (64, 48), ROTATED: (40, 60)}


def write_image_set(root: Path) -> Path:
    """Write the images above into ``root`` (and OUTSIDE next to it); returns ``root``."""
    write_image(root / WIDE, 200, 100)
    write_image(root / SMALL, 64, 48, colour=(10, 200, 200), fmt="JPEG")
    write_exif_rotated_jpeg(root / ROTATED, 60, 40)
    (root / TEXT).write_text("this is not an image\n")
    write_image(root / HUGE, 400, 300)
    write_image(root.parent / OUTSIDE, 50, 50)
    return root


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate`` until it holds; a TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(interval)


def kill9(proc: subprocess.Popen) -> None:
    """SIGKILL a process the test started, and check that it died of that signal."""
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


@contextlib.contextmanager
def reaped(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Kill ``proc`` (started by the test) on the way out if it still runs, whatever the test asserted."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def webhook(action: str, project: str | int = "5", **extra) -> dict:
    """A Label Studio webhook body for ``action`` on ``project``."""
    return {"action": action, "project": {"id": int(project), "title": "p"}, **extra}
