"""gunicorn settings, taken from the same environment variables as the app (backend.settings)."""

import contextlib
import os

from backend.settings import Settings
from backend.worker import BoundedThreadWorker

_settings = Settings.from_env()

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
threads = _settings.threads
# gthread, with slow or stalled clients cut off after CLIENT_TIMEOUT seconds (backend/worker.py).
BoundedThreadWorker.client_timeout = _settings.client_timeout
worker_class = BoundedThreadWorker
# Connections one worker holds at once, idle kept-alive ones included (gunicorn's default, said here).
worker_connections = 1000
# Label Studio waits 100 s for /predict; a long batch must not be killed before that.
timeout = 300
graceful_timeout = 30
accesslog = "-"
# gunicorn's default access log format has no query string or auth header in it.
loglevel = _settings.log_level.lower()
# Each worker's heartbeat touches a temporary file; on a container's overlay
# filesystem that can stall the worker (gunicorn's FAQ, "Blocking os.fchmod"), so
# keep it in RAM where there is a /dev/shm.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"
# gunicorn's control socket goes under $HOME/.gunicorn. A container run with
# `--user UID` (to own a bind-mounted MODEL_DIR) has HOME=/, where it cannot be
# made: go without the socket rather than log an error at every start.
if not os.access(os.path.expanduser("~"), os.W_OK):
    control_socket_disable = True


def on_starting(server) -> None:
    """Refuse to start when MODEL_DIR cannot be written, and say how to fix it.

    Every model version, job record and cached image is written there: without
    write access /health says UP while every /predict answers 500. The usual cause
    is a host folder mounted over the image's /data/models that belongs to another
    user than the container's (uid 10001 unless `--user` says otherwise).
    """
    folder = _settings.model_dir
    with contextlib.suppress(OSError):  # the check below names the folder
        os.makedirs(folder, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        uid = os.getuid()
        raise RuntimeError(
            f"MODEL_DIR {folder} is not writable by uid {uid}: give the folder to that user "
            f"(chown -R {uid} on the host) or run the container as its owner (--user)"
        )
