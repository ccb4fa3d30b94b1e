"""Fixtures shared by the unit tests (helpers live in tests/helpers.py)."""

from __future__ import annotations

import subprocess

import pytest
import torch
from flask import Flask
from flask.testing import FlaskClient

from backend.app import create_app
from helpers import make_settings, write_image_set

# The Label Studio session fixtures (one server for the whole run), in tests/labelstudio.py.
pytest_plugins = ["labelstudio"]


@pytest.fixture(scope="session", autouse=True)
def offline_environment(tmp_path_factory: pytest.TempPathFactory):
    """An empty TORCH_HOME (no cached weights, nothing downloaded into the user's cache)
    and none of the Label Studio variables that label-studio-sdk would read itself."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
        for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN"):
            mp.delenv(name, raising=False)
        yield


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """Whatever torch thread count a test sets (the benchmark's in-process path sets one), the
    next test starts with this process's own: a count left behind changes how convolutions round."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def image_root(tmp_path_factory: pytest.TempPathFactory):
    """LOCAL_FILES_DOCUMENT_ROOT of the session app, holding helpers' image set."""
    return write_image_set(tmp_path_factory.mktemp("files") / "root")


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory, image_root) -> Flask:
    """One app (and so one model per project) for the whole session."""
    models = tmp_path_factory.mktemp("models")
    return create_app(make_settings(models, local_files_document_root=str(image_root)))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs: a disk that fills up. Skipped where mounting is not allowed.

    Ask for it before ``monkeypatch``: it is unmounted after the patches are undone.
    """
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
