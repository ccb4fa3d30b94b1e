"""Tests of backend/worker.py under a real gunicorn: clients that stall half-way through their
headers hold a thread for CLIENT_TIMEOUT at most, then lose their connection, and /health answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gunicorn(tmp_path):
    """docker/gunicorn.conf.py with 2 threads and CLIENT_TIMEOUT=2, in its own process group."""
    port = _free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "MODEL_DIR": str(tmp_path / "models"),
        "THREADS": "2",
        "LIGHT_THREADS": "1",
        "CLIENT_TIMEOUT": "2",
        "WEIGHTS": "none",
        "LOG_LEVEL": "WARNING",
    }
    command = [
        str(Path(sys.executable).parent / "gunicorn"),
        "-c",
        "docker/gunicorn.conf.py",
        "backend.app:create_app()",
    ]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # importing torch takes a few seconds
            try:
                if requests.get(f"{url}/health", timeout=5).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            pytest.fail("gunicorn did not answer /health")
        yield url, port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def test_stalled_clients_are_cut_off_and_light_routes_answer(gunicorn):
    url, port = gunicorn
    stalled = []
    for _ in range(6):  # three times the worker's threads
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line that ends the headers
        stalled.append(s)
    try:
        assert requests.get(f"{url}/health", timeout=120).status_code == 200
        for s in stalled:
            s.settimeout(120)  # far beyond CLIENT_TIMEOUT: recv raises only if the server kept it open
            while s.recv(1024):  # whatever the server said, it then closed the connection
                pass
    finally:
        for s in stalled:
            s.close()
