"""A real Label Studio and the backend on loopback, and a small REST client: what the
end-to-end tests (tests/labelstudio.py's fixtures) and ``make demo`` share.

Label Studio lives in a venv of its own (``ensure_ls_venv``: env ``LS_VENV``, default
``~/.cache/hua-backend/ls-venv``; ``LS_PYTHON`` the interpreter that creates it), never in
the project's venv. Its first start on an empty data dir runs the migrations (about
40-60 s). ``E2E_BACKEND_ROOT``: the directory gunicorn ``--chdir``s to before importing
``backend.app`` (default: the repository root).

Facts checked against a real Label Studio 1.23.2 (see also docs/label-studio.md;
differences are marked "NOTE"):

- Project titles must have at least 3 characters (400 otherwise).
- ``POST /api/ml`` accepts ``auth_method: "BASIC_AUTH"``, ``basic_auth_user``,
  ``basic_auth_pass``; it calls the backend's /health then /setup with that basic
  auth and answers 400 ("authentication parameters were either not provided or are
  incorrect") on a 401 from /health, leaving no record behind. The response's
  ``model_version`` is what /setup returned; the *project's* model_version becomes
  the ML backend's title.
- NOTE: ``GET /api/ml/{id}/versions`` makes Label Studio call the backend with
  **GET** /versions, not POST, and WITHOUT the project (no body, no query string).
  A 404 falls back to ``[<ML backend's model_version>]`` (the /setup answer at
  connect time); any other error (e.g. 405) is passed on as an error.
- ``POST /api/ml/{id}/train`` answers 200 with an empty body and sends
  ``/webhook {"action": "START_TRAINING"}`` with basic auth; annotation webhooks
  (``ANNOTATION_CREATED``) come without any auth header.
- ``retrieve_tasks_predictions`` is synchronous in the open-source edition: it
  answers ``{"processed_items": n, "detail": "Retrieved n predictions"}`` after the
  backend's /predict has returned.
- A local storage (``use_blob_urls: false``) is enough for ``/data/local-files/?d=``
  URLs of imported tasks to be served: no sync needed. NOTE: syncing such a storage
  fails unless the folder holds JSON/JSONL/Parquet task files. Syncing a storage
  with ``use_blob_urls: true`` creates one task per file, and its URLs are
  ABSOLUTE (``http://<--host>/data/local-files/?d=...``), not relative.
- Creating a local storage for a path that does not exist answers 400.
- Uploading a file through ``POST /api/projects/{id}/import`` (multipart, field
  ``file``) makes one task whose data key is the config's image key
  (``{"image": "/data/upload/<project>/<hash>-<name>"}``).
- ``/data/upload/...`` and ``/data/local-files/...`` answer 401 without a token.
- ``GET /api/tasks?project=P&fields=all`` is paginated (``page``, ``page_size``;
  404 "Invalid page." past the end) and returns ``{"total", "tasks": [...]}`` with
  each task's ``predictions`` inlined.
- ``PATCH /api/projects/{id} {"model_version": V}`` is refused (400) unless V is
  known (from the live ML backend or stored predictions).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

LS_VERSION = "1.23.2"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LS_VENV = Path("~/.cache/hua-backend/ls-venv").expanduser()

LS_START_TIMEOUT_S = 300.0
BACKEND_START_TIMEOUT_S = 120.0
VENV_INSTALL_TIMEOUT_S = 1800.0
# Label Studio waits up to 100 s for /predict (ML_TIMEOUT_PREDICT); a client call
# that triggers it must wait longer than that.
HTTP_TIMEOUT_S = 300.0


__all__ = [
    "LS_VERSION",
    "REPO_ROOT",
    "LabelStudio",
    "LabelStudioError",
    "LabelStudioServer",
    "MLBackendServer",
    "ensure_ls_venv",
    "start_label_studio",
    "start_ml_backend",
    "stop_process",
    "free_port",
    "log_tail",
    "project_uid",
    "wait_for_job",
]


# --------------------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the child binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path | str | None, n_chars: int = 6000) -> str:
    """The last ``n_chars`` characters of a log file, for failure messages."""
    if path is None:
        return "<no log>"
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    text = data[-n_chars:].decode("utf-8", errors="replace")
    return f"----- last {len(text)} chars of {path} -----\n{text}\n----- end of {path} -----"


def stop_process(proc: subprocess.Popen | None, grace_s: float = 15.0) -> None:
    """Stop a child started with ``start_new_session=True`` and its whole group."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # Members of the group may outlive the leader a moment; make sure none is left.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The inherited environment less what would leak into a child's config.

    Label Studio reads ``LABEL_STUDIO_<NAME>`` and ``HEARTEX_<NAME>`` for any of its
    settings, so an outer LABEL_STUDIO_URL/API_KEY or similar must not reach it.
    """
    env = dict(os.environ if base is None else base)
    for key in list(env):
        if key.startswith(("LABEL_STUDIO_", "HEARTEX_", "DJANGO_")) or key in (
            "PYTHONPATH",
            "PYTHONHOME",
            "VIRTUAL_ENV",
        ):
            del env[key]
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _popen_logged(cmd: Sequence[str], *, cwd: Path, env: dict[str, str], log_path: Path):
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_f = open(log_path, "ab", buffering=0)
    log_f.write(f"$ {' '.join(cmd)}\n".encode())
    try:
        return subprocess.Popen(
            list(cmd),
            cwd=str(cwd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_f,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: killed as a whole at teardown
        )
    finally:
        log_f.close()  # the child holds its own descriptor


def _wait_http_ok(
    url: str,
    proc: subprocess.Popen,
    timeout_s: float,
    *,
    auth: tuple[str, str] | None = None,
    what: str,
    log_path: Path,
) -> float:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits. Returns seconds."""
    t0 = time.monotonic()
    last = "no answer yet"
    while True:
        rc = proc.poll()
        if rc is not None:
            raise RuntimeError(f"{what} exited with code {rc} before {url} answered\n{log_tail(log_path)}")
        try:
            r = requests.get(url, auth=auth, timeout=5)
            if r.status_code == 200:
                return time.monotonic() - t0
            last = f"HTTP {r.status_code}: {r.text[:300]}"
        except requests.RequestException as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(
                f"{what} did not answer 200 on {url} within {timeout_s:.0f} s (last: {last})\n{log_tail(log_path)}"
            )
        time.sleep(0.5)


def project_uid(project: dict) -> str:
    """The ``project`` string Label Studio sends to /setup and /predict: ``<id>.<created_at>``."""
    created = datetime.fromisoformat(project["created_at"].replace("Z", "+00:00"))
    return f"{project['id']}.{int(created.timestamp())}"


# --------------------------------------------------------------------------------------
# the Label Studio venv


def ensure_ls_venv(venv: Path | str | None = None, log_path: Path | None = None) -> Path:
    """Return a venv with label-studio==LS_VERSION, creating it when missing.

    Location: ``venv``, else env ``LS_VENV``, else ``~/.cache/hua-backend/ls-venv``
    (outside the repository, so fresh clones on one machine reuse it). Nothing is
    done when ``<venv>/bin/label-studio`` exists. A lock file beside the venv keeps
    parallel sessions from installing at once.
    """
    venv = Path(venv or os.environ.get("LS_VENV") or DEFAULT_LS_VENV).expanduser().resolve()
    exe = venv / "bin" / "label-studio"
    if exe.exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    log_path = log_path or venv.parent / f"{venv.name}.install.log"
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if exe.exists():  # installed by another session while we waited
            return venv
        python = os.environ.get("LS_PYTHON") or shutil.which("python3") or sys.executable
        env = _child_env()
        steps = [
            [python, "-m", "venv", str(venv)],
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                f"label-studio=={LS_VERSION}",
            ],
        ]
        with open(log_path, "ab") as log_f:
            for cmd in steps:
                log_f.write(f"$ {' '.join(cmd)}\n".encode())
                log_f.flush()
                try:
                    rc = subprocess.run(
                        cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=log_f,
                        stderr=subprocess.STDOUT,
                        env=env,
                        timeout=VENV_INSTALL_TIMEOUT_S,
                    ).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
                if rc != 0:
                    # pip may have written the entry point before failing on a
                    # dependency: remove it so that the next run installs again.
                    with contextlib.suppress(FileNotFoundError):
                        exe.unlink()
                    raise RuntimeError(f"{' '.join(cmd)} failed ({rc})\n{log_tail(log_path)}")
        if not exe.exists():
            raise RuntimeError(f"{exe} missing after install\n{log_tail(log_path)}")
    return venv


# --------------------------------------------------------------------------------------
# the Label Studio server


@dataclass
class LabelStudioServer:
    url: str
    port: int
    token: str  # legacy API token ("Authorization: Token <token>")
    username: str
    password: str
    data_dir: Path
    document_root: Path  # LOCAL_FILES_DOCUMENT_ROOT
    log_path: Path
    process: subprocess.Popen
    start_seconds: float = 0.0

    def client(self, timeout: float = HTTP_TIMEOUT_S) -> LabelStudio:
        return LabelStudio(self.url, self.token, timeout=timeout)

    def log_tail(self, n_chars: int = 6000) -> str:
        return log_tail(self.log_path, n_chars)

    def stop(self) -> None:
        stop_process(self.process)


def start_label_studio(
    venv: Path,
    base_dir: Path,
    *,
    port: int | None = None,
    timeout_s: float = LS_START_TIMEOUT_S,
    extra_env: dict[str, str] | None = None,
    username: str = "e2e@example.com",
    password: str | None = None,
) -> LabelStudioServer:
    """Start Label Studio on 127.0.0.1 with a data dir and a document root under
    ``base_dir``, its first user ``username`` (a random password unless given) with a
    legacy token; return once /health answers 200. Raises RuntimeError (with the
    tail of LS's log) when it exits or does not come up within ``timeout_s``."""
    port = port or free_port()
    base_dir = Path(base_dir)
    data_dir = base_dir / "data"
    document_root = base_dir / "files"
    log_path = base_dir / "label-studio.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    document_root.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    token = secrets.token_hex(20)
    password = password or secrets.token_urlsafe(12)

    env = _child_env()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        {
            "LABEL_STUDIO_USERNAME": username,
            "LABEL_STUDIO_PASSWORD": password,
            "LABEL_STUDIO_USER_TOKEN": token,
            # loopback ML backend and webhooks (LS >= 1.23.1 blocks them otherwise)
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "LOCAL_FILES_SERVING_ENABLED": "true",
            "LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
            # quiet, offline start
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "CONVERTER_DOWNLOAD_RESOURCES": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
        }
    )
    env.update(extra_env or {})
    cmd = [
        str(venv / "bin" / "label-studio"),
        "start",
        "--no-browser",
        "--host",
        url,
        "--internal-host",
        "127.0.0.1",
        "-p",
        str(port),
        "--data-dir",
        str(data_dir),
        "--enable-legacy-api-token",
    ]
    proc = _popen_logged(cmd, cwd=base_dir, env=env, log_path=log_path)
    try:
        seconds = _wait_http_ok(f"{url}/health", proc, timeout_s, what="Label Studio", log_path=log_path)
    except BaseException:
        stop_process(proc)
        raise
    return LabelStudioServer(
        url=url,
        port=port,
        token=token,
        username=username,
        password=password,
        data_dir=data_dir,
        document_root=document_root,
        log_path=log_path,
        process=proc,
        start_seconds=seconds,
    )


# --------------------------------------------------------------------------------------
# the REST client


class LabelStudioError(RuntimeError):
    def __init__(self, response: requests.Response):
        self.response = response
        self.status_code = response.status_code
        req = response.request
        super().__init__(f"{req.method} {req.url} -> HTTP {response.status_code}: {response.text[:2000]}")


class LabelStudio:
    """A small Label Studio REST client authenticating with the legacy token."""

    def __init__(self, url: str, token: str, timeout: float = HTTP_TIMEOUT_S):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    # -- plumbing

    def request(self, method: str, path: str, *, ok: Iterable[int] = (), **kw) -> requests.Response:
        kw.setdefault("timeout", self.timeout)
        r = self.session.request(method, self.url + path, **kw)
        if r.status_code >= 400 and r.status_code not in tuple(ok):
            raise LabelStudioError(r)
        return r

    def _json(self, method: str, path: str, **kw) -> Any:
        r = self.request(method, path, **kw)
        return r.json() if r.content else None

    def get(self, path: str, **kw) -> Any:
        return self._json("GET", path, **kw)

    def post(self, path: str, **kw) -> Any:
        return self._json("POST", path, **kw)

    def patch(self, path: str, **kw) -> Any:
        return self._json("PATCH", path, **kw)

    def whoami(self) -> dict:
        return self.get("/api/current-user/whoami")

    # -- projects

    def create_project(self, title: str, label_config: str, **fields) -> int:
        """Title: at least 3 characters."""
        return int(self.post("/api/projects", json={"title": title, "label_config": label_config, **fields})["id"])

    def get_project(self, project: int) -> dict:
        return self.get(f"/api/projects/{project}")

    def update_project(self, project: int, **fields) -> dict:
        return self.patch(f"/api/projects/{project}", json=fields)

    def model_versions(self, project: int) -> dict:
        """``{version: number of predictions}`` of the project's stored predictions."""
        return self.get(f"/api/projects/{project}/model-versions")

    # -- data

    def create_local_storage(
        self, project: int, path: Path | str, *, use_blob_urls: bool = False, sync: bool = False, **fields
    ) -> int:
        """A local-files import storage for ``path`` (a folder under LS's
        LOCAL_FILES_DOCUMENT_ROOT). With ``use_blob_urls=False`` it only allows
        /data/local-files/?d=... URLs of imported tasks to be served (no sync
        needed). ``sync=True`` with ``use_blob_urls=True`` makes one task per file
        (with ABSOLUTE URLs)."""
        body = {"project": project, "path": str(path), "use_blob_urls": use_blob_urls, **fields}
        storage = int(self.post("/api/storages/localfiles", json=body)["id"])
        if sync:
            self.sync_local_storage(storage)
        return storage

    def sync_local_storage(self, storage: int, timeout_s: float = 120.0) -> dict:
        info = self.post(f"/api/storages/localfiles/{storage}/sync")
        t0 = time.monotonic()
        while info.get("status") not in ("completed", "failed"):
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"storage {storage} sync still {info.get('status')!r}")
            time.sleep(0.5)
            info = self.get(f"/api/storages/localfiles/{storage}")
        if info["status"] == "failed":
            raise RuntimeError(f"storage {storage} sync failed:\n{info.get('traceback')}")
        return info

    def import_tasks(self, project: int, tasks: list[dict]) -> dict:
        """``tasks``: ``[{"image": url}, ...]`` or full task dicts ``{"data": ...}``."""
        return self.post(f"/api/projects/{project}/import", json=tasks)

    def upload_file(self, project: int, path: Path | str) -> dict:
        """Import one file as a task: it is served as /data/upload/<project>/<hash>-<name>."""
        path = Path(path)
        with open(path, "rb") as f:
            return self.post(f"/api/projects/{project}/import", files={"file": (path.name, f)})

    def tasks(self, project: int, page_size: int = 100, **params) -> list[dict]:
        """All tasks of a project with everything inlined (predictions, annotations)."""
        out: list[dict] = []
        page = 1
        while True:
            r = self.request(
                "GET",
                "/api/tasks",
                ok=(404,),
                params={"project": project, "fields": "all", "page": page, "page_size": page_size, **params},
            )
            if r.status_code == 404:  # "Invalid page." past the end
                break
            body = r.json()
            out.extend(body["tasks"])
            if len(out) >= body["total"] or not body["tasks"]:
                break
            page += 1
        return out

    def predictions(self, *, task: int | None = None, project: int | None = None) -> list[dict]:
        params = {k: v for k, v in (("task", task), ("project", project)) if v is not None}
        return self.get("/api/predictions", params=params)

    def create_annotation(self, task: int, result: list[dict], **fields) -> dict:
        """Makes LS POST /webhook ANNOTATION_CREATED (no auth) to the connected backend."""
        return self.post(f"/api/tasks/{task}/annotations", json={"result": result, **fields})

    # -- ML backend

    def connect_ml_backend(
        self,
        project: int,
        url: str,
        title: str = "hua-backend",
        *,
        user: str | None = None,
        password: str | None = None,
        **fields,
    ) -> int:
        """Connect a backend; LS calls its /health and /setup (with basic auth when
        ``user`` is given) and answers 400 when they fail."""
        body: dict[str, Any] = {"project": project, "url": url, "title": title, **fields}
        if user is not None:
            body.update(auth_method="BASIC_AUTH", basic_auth_user=user, basic_auth_pass=password)
        return int(self.post("/api/ml", json=body)["id"])

    def ml_versions(self, ml: int) -> requests.Response:
        """LS calls the backend's GET /versions (raw response: errors are passed on)."""
        return self.request("GET", f"/api/ml/{ml}/versions", ok=range(400, 600))

    def train(self, ml: int) -> requests.Response:
        """LS POSTs /webhook {"action": "START_TRAINING", project} (with basic auth)."""
        return self.request("POST", f"/api/ml/{ml}/train", json={})

    def retrieve_predictions(self, project: int, task_ids: list[int] | None = None) -> dict:
        """Data Manager action "Retrieve predictions": ONE /predict with every selected
        task; synchronous, answers {"processed_items", "detail"}."""
        selected = {"all": False, "included": task_ids} if task_ids else {"all": True, "excluded": []}
        return self.post(
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project},
            json={"selectedItems": selected},
        )

    # -- data manager / label stream

    def views(self, project: int) -> list[dict]:
        return self.get("/api/dm/views", params={"project": project})

    def next_task(self, project: int, view: int | None = None) -> dict | None:
        """The next task of the label stream; NOTE it locks that task for this user."""
        params = {"view": view} if view is not None else {}
        r = self.request("GET", f"/api/projects/{project}/next", params=params, ok=(404,))
        return None if r.status_code == 404 else r.json()

    def webhooks(self, project: int) -> list[dict]:
        return self.get("/api/webhooks", params={"project": project})


# --------------------------------------------------------------------------------------
# the backend under test


@dataclass
class MLBackendServer:
    url: str
    port: int
    user: str
    password: str
    model_dir: Path
    log_path: Path
    process: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)
    start_seconds: float = 0.0

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    def get(self, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", HTTP_TIMEOUT_S)
        return requests.get(self.url + path, auth=self.auth, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", HTTP_TIMEOUT_S)
        return requests.post(self.url + path, auth=self.auth, **kw)

    def log_tail(self, n_chars: int = 6000) -> str:
        return log_tail(self.log_path, n_chars)

    def stop(self) -> None:
        stop_process(self.process)


def _gunicorn_cmd() -> list[str]:
    exe = REPO_ROOT / ".venv" / "bin" / "gunicorn"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "gunicorn"]


def start_ml_backend(
    ls: LabelStudioServer,
    model_dir: Path,
    log_path: Path,
    *,
    port: int | None = None,
    extra_env: dict[str, str] | None = None,
    timeout_s: float = BACKEND_START_TIMEOUT_S,
) -> MLBackendServer:
    """Start ``backend.app:create_app()`` under gunicorn on 127.0.0.1, wired to ``ls``;
    return once GET /health (with basic auth) answers 200. Raises RuntimeError with
    the tail of its log otherwise. ``extra_env`` overrides the defaults below."""
    port = port or free_port()
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    user, password = "ml", secrets.token_urlsafe(16)
    env = _child_env()
    settings = {
        "MODEL_DIR": str(model_dir),
        "WEIGHTS": "none",
        "BACKBONE": "mobilenet_v3_320_fpn",
        "DEVICE": "cpu",
        "LABEL_STUDIO_URL": ls.url,
        "LABEL_STUDIO_API_KEY": ls.token,
        "LOCAL_FILES_DOCUMENT_ROOT": str(ls.document_root),
        "BASIC_AUTH_USER": user,
        "BASIC_AUTH_PASS": password,
        "SCORE_THRESHOLD": "0.0",  # an untrained model still returns boxes
        "LOG_LEVEL": "DEBUG",
    }
    settings.update(extra_env or {})
    env.update(settings)
    user, password = settings["BASIC_AUTH_USER"], settings["BASIC_AUTH_PASS"]
    app_root = Path(os.environ.get("E2E_BACKEND_ROOT") or REPO_ROOT)
    cmd = _gunicorn_cmd() + [
        "--chdir",
        str(app_root),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--threads",
        "4",
        "--timeout",
        "300",
        "backend.app:create_app()",
    ]
    proc = _popen_logged(cmd, cwd=app_root, env=env, log_path=log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        seconds = _wait_http_ok(
            f"{url}/health", proc, timeout_s, auth=(user, password), what="ML backend (gunicorn)", log_path=log_path
        )
    except BaseException:
        stop_process(proc)
        raise
    return MLBackendServer(
        url=url,
        port=port,
        user=user,
        password=password,
        model_dir=model_dir,
        log_path=log_path,
        process=proc,
        env=settings,
        start_seconds=seconds,
    )


def wait_for_job(backend: MLBackendServer, project: int | str, kind: str, finished, timeout_s: float = 300.0) -> dict:
    """Poll the backend's GET /jobs until ``finished(record)`` is true for the project's
    ``kind`` job; returns that record. Raises TimeoutError with the backend's log tail."""
    t0, record = time.monotonic(), None
    while time.monotonic() - t0 < timeout_s:
        r = backend.get("/jobs", timeout=30)
        r.raise_for_status()
        record = r.json()["jobs"].get(str(project), {}).get(kind)
        if record is not None and finished(record):
            return record
        time.sleep(1.0)
    raise TimeoutError(
        f"{kind} job of project {project} not finished after {timeout_s:.0f} s: {record}\n{backend.log_tail(8000)}"
    )


# --------------------------------------------------------------------------------------
# `python -m demo.labelstudio ensure-venv`: for CI scripts that install it up front


if __name__ == "__main__":
    if sys.argv[1:] != ["ensure-venv"]:
        sys.exit(f"usage: {sys.argv[0]} ensure-venv")
    print(ensure_ls_venv())
