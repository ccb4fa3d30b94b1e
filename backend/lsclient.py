"""Talking to Label Studio's API with the backend's own token.

Label Studio 1.2x has two kinds of token (docs/label-studio.md): legacy tokens, sent
as ``Authorization: Token <key>``, and personal access tokens (a refresh JWT),
exchanged at ``/api/token/refresh/`` for a short-lived access JWT sent as
``Bearer``. ``LabelStudioAuth`` hides the difference.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from types import MappingProxyType

import jwt
import requests

# Refresh an access token this many seconds before it expires.
_EXPIRY_MARGIN_S = 30.0

# The Data Manager tab Label Studio makes for a project without tabs: every task, unfiltered, unsorted.
DEFAULT_VIEW_TITLE = "Default"
DEFAULT_VIEW: Mapping[str, object] = MappingProxyType({"filters": {"conjunction": "and", "items": []}, "ordering": []})


def is_personal_access_token(key: str) -> bool:
    """A personal access token is a JWT; a legacy token is an opaque string."""
    try:
        jwt.get_unverified_header(key)
        return True
    except jwt.PyJWTError:
        return False


class LabelStudioAuth:
    """Produces a token Label Studio accepts, refreshing PAT access tokens when due.

    Args:
        url (str): LABEL_STUDIO_URL.
        api_key (str): a legacy token or a personal access token.
        timeout (float): seconds for the refresh request.
    """

    def __init__(self, url: str, api_key: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._key = api_key
        self._timeout = timeout
        self._access: str = ""
        self._expires = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"LabelStudioAuth(url={self.url!r})"

    def access_token(self) -> str:
        """The legacy token as is, or a valid access JWT for a PAT ('' when no key is set)."""
        if not self._key or not is_personal_access_token(self._key):
            return self._key
        with self._lock:
            if time.time() > self._expires - _EXPIRY_MARGIN_S:
                self._refresh()
            return self._access

    def _refresh(self) -> None:
        response = requests.post(f"{self.url}/api/token/refresh/", json={"refresh": self._key}, timeout=self._timeout)
        response.raise_for_status()
        self._access = response.json()["access"]
        claims = jwt.decode(self._access, options={"verify_signature": False})
        self._expires = float(claims.get("exp", time.time() + 300))

    def headers(self) -> dict[str, str]:
        """The Authorization header for an API request."""
        token = self.access_token()
        if not token:
            return {}
        scheme = "Bearer" if is_personal_access_token(token) else "Token"
        return {"Authorization": f"{scheme} {token}"}


class LabelStudioError(RuntimeError):
    """Label Studio answered with an error or could not be reached."""


class ProjectNotFound(LabelStudioError):
    """Label Studio has no such project (a webhook or /rank for an id it does not know)."""


class LabelStudioClient:
    """The few Label Studio API calls the backend makes, with its own token.

    label-studio-sdk's generated client covers the same endpoints, but it does
    not expose the project export nor the bulk prediction import in a stable
    shape across 1.2x servers, and wraps every payload in pydantic models we
    would convert straight back to dicts; plain requests keep this small.

    Every call is retried on what a restart of Label Studio looks like
    (connection errors, 5xx answers), ``retries`` times with exponential
    backoff (``backoff``, twice that, ...), then fails naming the last error.

    Args:
        auth (LabelStudioAuth): base URL and token.
        timeout (float): seconds per request.
        retries (int): further tries after the first.
        backoff (float): seconds before the first retry.
    """

    def __init__(self, auth: LabelStudioAuth, timeout: float = 60.0, retries: int = 0, backoff: float = 1.0) -> None:
        self.auth = auth
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.session = requests.Session()

    def _send(self, method: str, path: str, **kwargs) -> requests.Response:
        """The answer to one call: any below 500, after retrying connection errors and 5xx.

        Without LABEL_STUDIO_URL every call fails, not the client's creation:
        a backend that only serves predictions needs no Label Studio API.
        """
        if not self.auth.url:
            raise LabelStudioError("LABEL_STUDIO_URL is not set: the backend cannot read annotations")
        kwargs.setdefault("timeout", self.timeout)
        failure = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self.session.request(method, f"{self.auth.url}{path}", headers=self.auth.headers(), **kwargs)
            except requests.RequestException as exc:
                failure = type(exc).__name__
                continue
            if response.status_code < 500:
                return response
            failure = f"HTTP {response.status_code} {response.text[:200]}"
        raise LabelStudioError(f"{method} {path}: {failure} ({self.retries + 1} tries)")

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        """One API call; raises LabelStudioError with the status (never the token) on failure."""
        response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            raise LabelStudioError(f"{method} {path}: HTTP {response.status_code} {response.text[:200]}")
        return response

    def project(self, project: str | int) -> dict:
        """The project, with its ``label_config``; the first call of every job, so an unknown id fails it at once.

        Raises:
            ProjectNotFound: Label Studio answers 404 (before any model is loaded).
        """
        response = self._send("GET", f"/api/projects/{project}/")
        if response.status_code == 404:
            raise ProjectNotFound(f"Label Studio has no project {project} (GET /api/projects/{project}/: HTTP 404)")
        if response.status_code >= 400:
            raise LabelStudioError(f"GET /api/projects/{project}/: HTTP {response.status_code} {response.text[:200]}")
        return response.json()

    def labeled_tasks(self, project: str | int) -> list[dict]:
        """Every task of the project that has at least one annotation, with its annotations."""
        params = {"exportType": "JSON", "download_all_tasks": "false"}
        return self.request("GET", f"/api/projects/{project}/export", params=params).json()

    def tasks(self, project: str | int, page_size: int = 500) -> list[dict]:
        """Every task of the project (paginated /api/tasks; LS answers 404 past the last page)."""
        found: list[dict] = []
        for page in range(1, 1_000_000):
            params = {"project": project, "page": page, "page_size": page_size, "fields": "all"}
            response = self._send("GET", "/api/tasks", params=params)
            if response.status_code == 404:
                break
            if response.status_code >= 400:
                raise LabelStudioError(f"GET /api/tasks: HTTP {response.status_code}")
            body = response.json()
            batch = body.get("tasks", []) if isinstance(body, dict) else body
            found.extend(batch)
            if len(batch) < page_size:
                break
        return found

    def import_predictions(self, project: str | int, predictions: list[dict], chunk: int = 1000) -> int:
        """Bulk-create predictions ({task, result, score, model_version}); returns how many."""
        created = 0
        for start in range(0, len(predictions), chunk):
            body = predictions[start : start + chunk]
            answer = self.request("POST", f"/api/projects/{project}/import/predictions", json=body).json()
            created += int(answer.get("created", len(body))) if isinstance(answer, dict) else len(body)
        return created

    def delete_version_predictions(self, project: str | int, model_version: str) -> None:
        """Remove every prediction of ``model_version`` (so a re-run leaves no duplicates)."""
        self.request("DELETE", f"/api/projects/{project}/model-versions", json={"model_version": model_version})

    def set_model_version(self, project: str | int, model_version: str) -> None:
        """Make ``model_version`` the project's current one (LS knows it once predictions exist)."""
        self.request("PATCH", f"/api/projects/{project}/", json={"model_version": model_version})

    def views(self, project: str | int) -> list[dict]:
        return self.request("GET", "/api/dm/views", params={"project": project}).json()

    def save_view(self, project: str | int, title: str, data: Mapping[str, object]) -> dict:
        """Create the Data Manager tab ``title``, or update it in place if it exists.

        Label Studio makes its own "Default" tab (every task, no filter) only
        when the Data Manager opens a project that has no tab at all. A tab
        created here first would leave the project without it, and annotated
        tasks, which a queue's filter leaves out, in no tab: so in a project
        with no tab the default one is created first, as Label Studio would.
        """
        views = self.views(project)
        existing = [v for v in views if (v.get("data") or {}).get("title") == title]
        body = {"project": int(project), "data": {**data, "title": title}}
        if existing:
            return self.request("PATCH", f"/api/dm/views/{existing[0]['id']}", json=body).json()
        if not views:
            default = {"project": int(project), "data": {**DEFAULT_VIEW, "title": DEFAULT_VIEW_TITLE}}
            self.request("POST", "/api/dm/views", json=default)
        return self.request("POST", "/api/dm/views", json=body).json()
