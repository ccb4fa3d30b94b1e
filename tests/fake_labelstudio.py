"""Label Studio's API as the ranking job calls it, over HTTP on 127.0.0.1, for job processes the
tests do not run themselves (RQ workers): the answers come from ``test_ranking_job.FakeLabelStudio``.

Only the calls of a ranking: the project, its tasks, the bulk import and deletion of
predictions, the project's model version and the Data Manager's tabs.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from test_ranking_job import FakeLabelStudio

PROJECT_PATH = re.compile(r"^/api/projects/(\d+)/$")
IMPORT_PATH = re.compile(r"^/api/projects/(\d+)/import/predictions$")
VERSIONS_PATH = re.compile(r"^/api/projects/(\d+)/model-versions$")
VIEW_PATH = re.compile(r"^/api/dm/views/(\d+)$")


class LabelStudioStub:
    """``fake``'s project over HTTP (``url``) under the ids ``projects`` (others: 404); serves while open."""

    def __init__(self, fake: FakeLabelStudio, projects: frozenset[str] = frozenset({"9"})) -> None:
        self.fake = fake
        self.projects = projects
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                url = urlparse(self.path)
                with stub.lock:
                    status, answer = stub.route(self.command, url.path, parse_qs(url.query), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def route(self, method: str, path: str, query: dict, body: object) -> tuple[int, object]:
        fake = self.fake
        if (m := PROJECT_PATH.match(path)) and m[1] not in self.projects:
            return 404, {"detail": "Not found."}
        if (m := PROJECT_PATH.match(path)) and method == "GET":
            return 200, fake.project(m[1])
        if (m := PROJECT_PATH.match(path)) and method == "PATCH":
            fake.set_model_version(m[1], body["model_version"])
            return 200, {}
        if path == "/api/tasks":
            page, size = int(query["page"][0]), int(query["page_size"][0])
            tasks = fake.tasks(query["project"][0])[(page - 1) * size : page * size]
            return (200, {"tasks": tasks}) if tasks or page == 1 else (404, {})
        if m := IMPORT_PATH.match(path):
            return 201, {"created": fake.import_predictions(m[1], body)}
        if m := VERSIONS_PATH.match(path):
            fake.delete_version_predictions(m[1], body["model_version"])
            return 200, {}
        if path == "/api/dm/views" and method == "GET":
            return 200, fake.views
        if path == "/api/dm/views" or VIEW_PATH.match(path):
            return 200, fake.save_view(body["project"], body["data"]["title"], body["data"])
        return 404, {"detail": f"{method} {path}"}

    def __enter__(self) -> LabelStudioStub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
