"""gunicorn settings, taken from the same environment variables as the app (backend.settings)."""

import os

from backend.settings import Settings

_settings = Settings.from_env()

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
threads = _settings.threads
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
