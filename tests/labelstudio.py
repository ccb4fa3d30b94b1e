"""End-to-end harness: pytest fixtures over demo/labelstudio.py (a real Label Studio
1.23.2, the backend under gunicorn, a small REST client; its docstring lists the facts
checked against Label Studio), and the small images the tests import.

Pytest fixtures defined here (import them by name from tests/conftest.py):

- ``ls_venv`` (session): ``Path`` of a venv that has ``label-studio==1.23.2``;
  created on first use (env ``LS_VENV``, default ``~/.cache/hua-backend/ls-venv``).
- ``label_studio`` (session): a running :class:`LabelStudioServer` (url, token,
  document_root, log_path, ...; ``.client()`` gives a :class:`LabelStudio`).
- ``ls_client`` (session): a :class:`LabelStudio` client for ``label_studio``,
  already checked to authenticate with the legacy token.
- ``ml_backend`` (session): a running :class:`MLBackendServer` (url, auth,
  model_dir, log_path, ...) started with gunicorn from the repository.
- ``e2e_images`` (session): an :class:`ImageSet` of small real images written
  under Label Studio's LOCAL_FILES_DOCUMENT_ROOT, plus files to upload.

Every test session starts Label Studio on a fresh temporary data dir.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backend.predictions import region
from demo import labelstudio as harness
from demo.labelstudio import (  # noqa: F401 (re-exported for the tests)
    DEFAULT_LS_VENV,
    HTTP_TIMEOUT_S,
    LS_VERSION,
    REPO_ROOT,
    LabelStudio,
    LabelStudioError,
    LabelStudioServer,
    MLBackendServer,
    _child_env,
    _popen_logged,
    ensure_ls_venv,
    free_port,
    log_tail,
    project_uid,
    start_label_studio,
    start_ml_backend,
    stop_process,
    wait_for_job,
)

__all__ = [
    *harness.__all__,
    "ImageSpec",
    "ImageSet",
    # fixtures
    "ls_venv",
    "label_studio",
    "ls_client",
    "ml_backend",
    "e2e_images",
]


def job_env(label_studio: LabelStudio, model_dir: Path, **extra: str) -> dict[str, str]:
    """The settings of a job process (CLI, RQ worker) against this Label Studio, as variables:
    the small random-init CPU model, one epoch, every box kept."""
    return {
        **_child_env(),
        "MODEL_DIR": str(model_dir),
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.document_root),
        "BACKBONE": "mobilenet_v3_320_fpn",
        "WEIGHTS": "none",
        "ALLOW_WEIGHTS_DOWNLOAD": "false",
        "DEVICE": "cpu",
        "EPOCHS": "1",
        "TRAIN_MIN_ITERATIONS": "1",
        "TRAIN_BATCH_SIZE": "2",
        "SCORE_THRESHOLD": "0.0",
        **extra,
    }


# --------------------------------------------------------------------------------------
# images


@dataclass(frozen=True)
class ImageSpec:
    name: str  # unique file name; task URLs end with it
    width: int
    height: int
    path: Path  # the file on disk
    url: str | None = None  # the task URL to import (None: uploaded or synced)


@dataclass
class ImageSet:
    local: list[ImageSpec]  # under LS's document root, imported as /data/local-files/?d=...
    local_dir: Path  # their folder (needs a local storage with use_blob_urls false)
    upload: list[ImageSpec]  # outside the document root, to upload via /api/projects/{id}/import
    synced: list[ImageSpec]  # in their own folder, for a use_blob_urls=true storage sync
    synced_dir: Path

    @property
    def all(self) -> list[ImageSpec]:
        return [*self.local, *self.upload, *self.synced]

    def local_tasks(self) -> list[dict]:
        return [{"image": s.url} for s in self.local]

    def spec_for_url(self, url: str) -> ImageSpec:
        """The image a task URL points at (uploads get a ``<hash>-`` prefix)."""
        hits = [
            s
            for s in self.all
            if url.endswith("/" + s.name)
            or url.endswith("=" + s.name)
            or url.endswith("-" + s.name)
            or url.endswith("%2F" + s.name)
        ]
        if len(hits) != 1:
            raise KeyError(f"no unique image for task URL {url!r}: {hits}")
        return hits[0]


def _draw(path: Path, width: int, height: int, colour: tuple[int, int, int], fmt: str) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (235, 235, 235))
    d = ImageDraw.Draw(img)
    d.rectangle([width // 5, height // 4, width * 3 // 5, height * 3 // 4], fill=colour)
    d.rectangle([width * 2 // 3, height // 8, width - 3, height // 2], fill=tuple(255 - c for c in colour))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)


def make_images(document_root: Path, upload_dir: Path, subdir: str = "e2e-images") -> ImageSet:
    """Write small real images: three for /data/local-files (square, landscape,
    portrait), one JPEG to upload, one for a synced storage."""
    local_dir = Path(document_root) / subdir
    synced_dir = Path(document_root) / f"{subdir}-synced"
    local = []
    for name, w, h, c in (
        ("e2e-square-64x64.png", 64, 64, (200, 30, 30)),
        ("e2e-landscape-80x60.png", 80, 60, (30, 30, 200)),
        ("e2e-portrait-48x72.png", 48, 72, (30, 160, 30)),
    ):
        p = local_dir / name
        _draw(p, w, h, c, "PNG")
        local.append(ImageSpec(name, w, h, p, f"/data/local-files/?d={subdir}/{name}"))
    up = Path(upload_dir) / "e2e-upload-72x40.jpg"
    _draw(up, 72, 40, (180, 120, 20), "JPEG")
    syn = synced_dir / "e2e-synced-56x88.png"
    _draw(syn, 56, 88, (20, 120, 180), "PNG")
    return ImageSet(
        local=local,
        local_dir=local_dir,
        upload=[ImageSpec(up.name, 72, 40, up)],
        synced=[ImageSpec(syn.name, 56, 88, syn)],
        synced_dir=synced_dir,
    )


# --------------------------------------------------------------------------------------
# pytest fixtures


@pytest.fixture(scope="session")
def ls_venv() -> Path:
    try:
        return ensure_ls_venv()
    except RuntimeError as e:
        error = str(e)
    pytest.fail(f"cannot set up the Label Studio venv: {error}", pytrace=False)


@pytest.fixture(scope="session")
def label_studio(ls_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    base = tmp_path_factory.mktemp("label-studio")
    try:
        server = start_label_studio(ls_venv, base)
    except RuntimeError as e:
        server, error = None, str(e)
    if server is None:
        pytest.fail(f"Label Studio did not start: {error}", pytrace=False)
    print(f"\nLabel Studio {server.url} up after {server.start_seconds:.1f} s, log {server.log_path}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ls_client(label_studio: LabelStudioServer) -> LabelStudio:
    client = label_studio.client()
    try:
        client.whoami()
        return client
    except LabelStudioError as e:
        error = str(e)
    pytest.fail(f"the legacy token is refused: {error}\n{label_studio.log_tail()}", pytrace=False)


@pytest.fixture(scope="session")
def ml_backend(label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLBackendServer]:
    base = tmp_path_factory.mktemp("ml-backend")
    try:
        server = start_ml_backend(label_studio, base / "model", base / "gunicorn.log")
    except RuntimeError as e:
        server, error = None, str(e)
    if server is None:
        pytest.fail(f"the ML backend did not start: {error}", pytrace=False)
    print(f"\nML backend {server.url} up after {server.start_seconds:.1f} s, log {server.log_path}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def e2e_images(label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    return make_images(label_studio.document_root, tmp_path_factory.mktemp("uploads"))


# --------------------------------------------------------------------------------------
# training: images with a known box, annotation results, waiting for a backend's jobs

__all__ += ["SquareImage", "SquareImages", "make_square_images", "square_result", "wait_for_job", "square_images"]


@dataclass(frozen=True)
class SquareImage:
    name: str
    url: str  # /data/local-files/?d=<subdir>/<name>
    path: Path
    width: int
    height: int
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels of the red square


@dataclass
class SquareImages:
    folder: Path  # under LS's document root (needs a local storage with use_blob_urls false)
    images: list[SquareImage]

    def tasks(self) -> list[dict]:
        return [{"image": s.url} for s in self.images]

    def for_url(self, url: str) -> SquareImage:
        return next(s for s in self.images if url.endswith("/" + s.name))


def make_square_images(
    document_root: Path, subdir: str = "e2e-train", count: int = 6, width: int = 128, height: int = 96, side: int = 48
) -> SquareImages:
    """``count`` grey images with one red square each, at places fixed by a seed."""
    import random

    from PIL import Image, ImageDraw

    folder = Path(document_root) / subdir
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    images = []
    for i in range(count):
        x, y = rng.randint(0, width - side), rng.randint(0, height - side)
        img = Image.new("RGB", (width, height), (128, 128, 128))
        ImageDraw.Draw(img).rectangle([x, y, x + side - 1, y + side - 1], fill=(255, 0, 0))
        name = f"e2e-square-{i}.png"
        img.save(folder / name)
        images.append(
            SquareImage(
                name, f"/data/local-files/?d={subdir}/{name}", folder / name, width, height, (x, y, x + side, y + side)
            )
        )
    return SquareImages(folder, images)


def square_result(image: SquareImage, label: str, from_name: str = "label", to_name: str = "image") -> list[dict]:
    """An annotation result (LS's percent coordinates) boxing ``image``'s square."""
    return [region(image.box, label, image.width, image.height, from_name, to_name)]


@pytest.fixture(scope="session")
def square_images(label_studio: LabelStudioServer) -> SquareImages:
    return make_square_images(label_studio.document_root)


#: A backend that trains after every 2 annotation events, in one short epoch (the training e2e tests).
TRAINING_BACKEND_ENV: dict[str, str] = {
    "TRAIN_EVERY": "2",
    "EPOCHS": "1",
    "TRAIN_MIN_ITERATIONS": "1",
    "TRAIN_BATCH_SIZE": "2",
    "ALLOW_WEIGHTS_DOWNLOAD": "false",
    "EVAL_MIN_TASKS": "1",
}


@contextlib.contextmanager
def training_backend(label_studio: LabelStudioServer, base: Path, **extra: str) -> Iterator[MLBackendServer]:
    """A backend of its own under ``base`` with :data:`TRAINING_BACKEND_ENV` (and ``extra``); stopped after."""
    try:
        server = start_ml_backend(
            label_studio, base / "model", base / "gunicorn.log", extra_env={**TRAINING_BACKEND_ENV, **extra}
        )
    except RuntimeError as e:
        pytest.fail(f"the ML backend did not start: {e}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()
