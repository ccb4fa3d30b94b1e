"""gunicorn settings, taken from the same environment variables as the app (backend.settings)."""

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
