"""Tests of the HTTP contract (backend/routes.py, backend/app.py, backend/auth.py,
backend/metrics.py) through Flask's test client, with the real small model on
the CPU. The session ``app`` (conftest) serves project 1 with helpers.LABELS
and reads images from helpers' image set through /data/local-files URLs.
"""

from __future__ import annotations

import base64
import logging
import math
import re
from dataclasses import replace
from urllib.parse import quote

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from backend.app import create_app
from backend.routes import MODEL_CLASS
from backend.service import app_service, build_service
from helpers import (
    CHOICES_CONFIG,
    DISPLAYED_SIZE,
    FROM_NAME,
    HUGE,
    LABEL_CONFIG,
    LABELS,
    OUTSIDE,
    ROTATED,
    SMALL,
    TEXT,
    TO_NAME,
    WIDE,
    LocalServer,
    Route,
    image_bytes,
    local_task,
    make_settings,
    predict_body,
)
from model.detector import build_model
from model.version_meta import VersionMeta

VERSION = re.compile(r"^v\d{4,}$")


@pytest.fixture
def fresh_app(tmp_path):
    """An app of its own (nothing created yet), for tests that inspect or break it."""
    return create_app(make_settings(tmp_path / "models"))


def _service(app):
    return app_service(app)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _assert_region(region: dict, width: int, height: int) -> None:
    """One Label Studio rectanglelabels region of an image displayed ``width`` x ``height``."""
    assert region["type"] == "rectanglelabels"
    assert (region["from_name"], region["to_name"]) == (FROM_NAME, TO_NAME)
    assert (region["original_width"], region["original_height"]) == (width, height)
    value = region["value"]
    assert value["rotation"] == 0
    assert len(value["rectanglelabels"]) == 1 and value["rectanglelabels"][0] in LABELS
    for key in ("x", "y", "width", "height"):
        assert _is_number(value[key]) and 0.0 <= value[key] <= 100.0, (key, value)
    assert value["x"] + value["width"] <= 100.0 + 1e-4
    assert value["y"] + value["height"] <= 100.0 + 1e-4
    assert _is_number(region["score"]) and 0.0 <= region["score"] <= 1.0


def _assert_predicted(item: dict, width: int, height: int) -> None:
    assert VERSION.match(item["model_version"])
    assert _is_number(item["score"]) and 0.0 <= item["score"] <= 1.0
    assert item["result"], "display_threshold 0 keeps detections"
    for region in item["result"]:
        _assert_region(region, width, height)


def _assert_empty(item: list) -> None:
    """An empty list: Label Studio stores nothing for the task (no "nothing found here")."""
    assert item == []


class TestHealth:
    @pytest.mark.parametrize("path", ["/health", "/"])
    def test_up(self, client, path):
        response = client.get(path)
        assert response.status_code == 200
        body = response.get_json()
        assert body["status"] == "UP"
        assert body["model_class"] == MODEL_CLASS and body["model_class"]

    def test_reports_device_weights_and_serving_versions_once_loaded(self, client):
        served = client.post("/predict", json=predict_body([])).get_json()["model_version"]
        body = client.get("/health").get_json()
        assert body["device"] == "cpu"
        assert body["serving"]["1"] == served
        assert body["weights"]["projects"]["1"]["used"] == "none"

    def test_loads_no_model(self, fresh_app):
        body = fresh_app.test_client().get("/health").get_json()
        assert _service(fresh_app).registry.serving() == {}
        assert "device" not in body and "serving" not in body  # the device is not asked for before a model runs
        assert body["weights"]["source"] == "random initialisation (configured: WEIGHTS=none)"
        assert "no model loaded yet" in body["weights"]["meaning"]

    def test_weights_fallen_back_to_random_say_there_are_no_pre_annotations(self, tmp_path, monkeypatch):
        """COCO asked for, no file in the cache and no download: /health says what the user will (not) see."""
        monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
        app = create_app(make_settings(tmp_path / "models", weights="coco"))
        client = app.test_client()
        assert client.post("/predict", json=predict_body([])).status_code == 200
        weights = client.get("/health").get_json()["weights"]
        assert weights["source"] == "random initialisation (coco weights were asked for but could not be had)"
        assert weights["meaning"] == "no pre-annotations until the first trainings" and weights["fell_back"] is True
        (project,) = weights["projects"].values()
        assert project["version"] == "v0001" and project["requested"] == "coco" and project["used"] == "none"
        assert any("not available offline" in reason for reason in project["reasons"])

    def test_weights_of_a_pretrained_start(self, tmp_path):
        """A version made from COCO weights (written here: a test downloads nothing) is described as such."""
        settings = make_settings(tmp_path / "models")
        service = build_service(settings)
        model, _ = build_model(service.registry.config, list(LABELS))
        meta = VersionMeta(labels=list(LABELS), backbone=settings.backbone, weights="coco", weights_requested="coco")
        service.store.save("1", model.state_dict(), meta)
        client = create_app(settings).test_client()
        assert client.post("/predict", json=predict_body([])).get_json()["model_version"] == "v0001"
        weights = client.get("/health").get_json()["weights"]
        assert weights["source"] == f"COCO weights ({settings.backbone})" and weights["fell_back"] is False
        assert weights["meaning"].startswith("pre-annotations from the start for labels that match a COCO class")

    @pytest.mark.parametrize(
        "device, cuda, backbone",
        [
            ("auto", True, "resnet50_fpn_v2"),
            ("auto", False, "mobilenet_v3_fpn"),
            ("cpu", True, "mobilenet_v3_fpn"),
        ],
    )
    def test_names_the_backbone_auto_chose(self, tmp_path, monkeypatch, device, cuda, backbone):
        """Without loading a model, hence without a CUDA context."""
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        app = create_app(make_settings(tmp_path / "models", backbone="auto", device=device))
        assert app.test_client().get("/health").get_json()["backbone"] == backbone
        assert _service(app).registry.serving() == {}


class TestSetup:
    BODY = {
        "project": "3.1712345678",
        "schema": LABEL_CONFIG,
        "hostname": "http://localhost:8080",
        "access_token": "user-token",
        "extra_params": {},
    }

    def test_fast_and_loads_no_model(self, fresh_app):
        response = fresh_app.test_client().post("/setup", json=self.BODY)
        assert response.status_code == 200
        assert response.get_json() == {"model_version": "v0000"}  # no version yet
        assert _service(fresh_app).registry.serving() == {}

    def test_names_the_newest_version_on_disk(self, fresh_app):
        store = _service(fresh_app).store
        store.save("3", {"w": torch.zeros(1)}, VersionMeta(labels=list(LABELS)))
        store.save("3", {"w": torch.zeros(1)}, VersionMeta(labels=list(LABELS)))
        response = fresh_app.test_client().post("/setup", json=self.BODY)
        assert response.get_json() == {"model_version": "v0002"}
        assert _service(fresh_app).registry.serving() == {}

    def test_integer_project_and_no_schema(self, fresh_app):
        response = fresh_app.test_client().post("/setup", json={"project": 3})
        assert response.status_code == 200

    def test_config_without_rectangle_labels(self, client):
        response = client.post("/setup", json={**self.BODY, "schema": CHOICES_CONFIG})
        assert response.status_code == 400
        assert "RectangleLabels" in response.get_json()["error"]

    def test_invalid_xml(self, client):
        response = client.post("/setup", json={**self.BODY, "schema": "<View><Image"})
        assert response.status_code == 400
        assert "label_config" in response.get_json()["error"]


class TestPredict:
    def test_one_item_per_task_in_order(self, client):
        names = [WIDE, SMALL, ROTATED]
        response = client.post("/predict", json=predict_body([local_task(11 + i, n) for i, n in enumerate(names)]))
        assert response.status_code == 200
        body = response.get_json()
        assert len(body["results"]) == 3
        for name, item in zip(names, body["results"]):
            _assert_predicted(item, *DISPLAYED_SIZE[name])  # sizes differ: this checks the order too
            assert item["model_version"] == body["model_version"]
        # the EXIF-rotated JPEG is stored 60 x 40: Label Studio shows (and sizes) it 40 x 60
        rotated = body["results"][2]["result"][0]
        assert (rotated["original_width"], rotated["original_height"]) == (40, 60)

    def test_batch_larger_than_batch_size(self, app, client, monkeypatch):
        detector = _service(app).registry.get("1", LABELS).detector
        assert _service(app).settings.batch_size == 2
        real_predict = detector.predict
        batches: list[int] = []

        def spy(images, flip=False):
            batches.append(len(images))
            return real_predict(images, flip=flip)

        monkeypatch.setattr(detector, "predict", spy)
        tasks = [local_task(i, name) for i, name in enumerate([SMALL, WIDE, SMALL])]
        body = client.post("/predict", json=predict_body(tasks)).get_json()
        assert batches == [2, 1]
        assert [item["result"][0]["original_width"] for item in body["results"]] == [64, 200, 64]

    def test_versions_lists_the_serving_version(self, client):
        served = client.post("/predict", json=predict_body([])).get_json()["model_version"]
        response = client.post("/versions", json={"project": "1.1700000000"})
        assert response.status_code == 200
        assert served in response.get_json()["versions"]


class TestPredictBadImages:
    """A bad task gets ``[]``; the good task of the same request is predicted.
    (Every kind of refused URL is in test_images.py; these go through the whole request.)"""

    BAD = {
        "no image key": {"id": 21, "data": {}},
        "missing file": local_task(21, "nope.png"),
        "host not allowed": {"id": 21, "data": {"image": "http://example.com/cat.png"}},
        "path traversal": local_task(21, "../../etc/passwd"),
        "path traversal to an image": local_task(21, f"../{OUTSIDE}"),
        "text file": local_task(21, TEXT),
        "too many pixels": local_task(21, HUGE),
    }

    @pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
    def test_bad_task_is_empty_and_the_other_is_predicted(self, client, caplog, bad):
        with caplog.at_level(logging.WARNING, logger="backend.predictions"):
            response = client.post("/predict", json=predict_body([bad, local_task(22, SMALL)]))
        assert response.status_code == 200
        first, second = response.get_json()["results"]
        _assert_empty(first)
        _assert_predicted(second, *DISPLAYED_SIZE[SMALL])
        assert any(r.getMessage().startswith("task 21:") for r in caplog.records)
        assert not any("task 22" in r.getMessage() for r in caplog.records)


class _RecordingScheduler:
    """Stands in for the job scheduler: records requested jobs, starts nothing."""

    def __init__(self) -> None:
        self.requested: list[tuple[str, str]] = []

    def request(self, project: str, kind: str) -> str:
        self.requested.append((project, kind))
        return "scheduled"


class TestPredictDeadline:
    """PREDICT_DEADLINE: what is not predicted in time is answered [] and handed to a predict job."""

    @pytest.fixture
    def late_app(self, tmp_path, image_root):
        """A deadline that has passed before the first batch can start."""
        settings = make_settings(tmp_path / "models", local_files_document_root=str(image_root), predict_deadline=1e-9)
        return create_app(service=replace(build_service(settings), scheduler=_RecordingScheduler()))

    def test_unreached_tasks_get_empty_lists_and_a_predict_job(self, late_app, caplog):
        tasks = [local_task(41, SMALL), local_task(42, WIDE), local_task(43, TEXT)]
        with caplog.at_level(logging.INFO, logger="backend.deferred"):
            response = late_app.test_client().post("/predict", json=predict_body(tasks))
        assert response.status_code == 200
        assert response.get_json()["results"] == [[], [], []]
        service = _service(late_app)
        assert service.scheduler.requested == [("1", "predict")]
        _, ids = service.deferred.pending("1")
        assert ids == {41, 42, 43}  # the broken image too: nobody has looked at it yet
        (message,) = [r.getMessage() for r in caplog.records if r.name == "backend.deferred"]
        assert "3 tasks" in message and "/jobs" in message

    def test_deferred_tasks_are_counted(self, late_app):
        client = late_app.test_client()
        client.post("/predict", json=predict_body([local_task(41, SMALL), local_task(42, WIDE)]))
        samples = _samples(client)
        assert samples[("hua_predictions_total", (("outcome", "deferred"),))] == 2
        assert samples[("hua_predictions_total", (("outcome", "ok"),))] == 0

    def test_nothing_is_deferred_within_the_deadline(self, client):
        service = _service(client.application)
        body = client.post("/predict", json=predict_body([local_task(44, SMALL)])).get_json()
        assert body["results"][0]["result"]
        assert service.deferred.pending("1") == ([], set())


def _post_raw(client, path: str, data: str):
    return client.post(path, data=data, content_type="application/json")


class TestBadRequests:
    """Each wrong body answers 400 with a JSON error that names the field."""

    def _error(self, response, status: int = 400) -> str:
        assert response.status_code == status
        body = response.get_json()
        assert body["status"] == status
        return body["error"]

    @pytest.mark.parametrize("path", ["/predict", "/setup", "/webhook", "/versions"])
    def test_malformed_json(self, client, path):
        assert "JSON" in self._error(_post_raw(client, path, '{"tasks": [1, 2'))

    @pytest.mark.parametrize("data", ["[]", '"tasks"', "null", "3"])
    def test_body_not_an_object(self, client, data):
        assert "JSON object" in self._error(_post_raw(client, "/predict", data))

    @pytest.mark.parametrize("tasks", [None, {"id": 1}, "tasks", 3])
    def test_tasks_not_a_list(self, client, tasks):
        body = predict_body([])
        body["tasks"] = tasks
        assert "'tasks'" in self._error(client.post("/predict", json=body))

    def test_tasks_missing(self, client):
        body = predict_body([])
        del body["tasks"]
        assert "'tasks'" in self._error(client.post("/predict", json=body))

    @pytest.mark.parametrize("task", [{"id": 2}, {"id": 2, "data": "img.png"}, {"id": 2, "data": None}, "task", None])
    def test_task_without_data_object(self, client, task):
        error = self._error(client.post("/predict", json=predict_body([local_task(1, SMALL), task])))
        assert "tasks[1]" in error and "data" in error

    @pytest.mark.parametrize("project", [None, "", "abc", "x.123", "-1", True, [1], {"id": "abc"}, {"title": "p"}, 1.5])
    def test_project_missing_or_not_numeric(self, client, project):
        body = predict_body([local_task(1, SMALL)], project=project)
        assert "'project'" in self._error(client.post("/predict", json=body))

    def test_project_absent(self, client):
        body = predict_body([local_task(1, SMALL)])
        del body["project"]
        assert "'project'" in self._error(client.post("/predict", json=body))

    @pytest.mark.parametrize("config", [None, 5, ["<View/>"], {"xml": "<View/>"}])
    def test_label_config_not_a_string(self, client, config):
        body = predict_body([local_task(1, SMALL)], label_config=config)
        assert "'label_config'" in self._error(client.post("/predict", json=body))

    def test_label_config_without_rectangle_labels(self, client):
        body = predict_body([local_task(1, SMALL)], label_config=CHOICES_CONFIG)
        assert "RectangleLabels" in self._error(client.post("/predict", json=body))

    def test_label_config_invalid_xml(self, client):
        body = predict_body([local_task(1, SMALL)], label_config="<View><Image name=")
        assert "label_config" in self._error(client.post("/predict", json=body))

    def test_setup_schema_not_a_string(self, client):
        assert "'schema'" in self._error(client.post("/setup", json={"project": "1", "schema": 7}))

    def test_versions_without_project(self, client):
        assert "'project'" in self._error(client.post("/versions", json={}))

    @pytest.mark.parametrize("action", [None, 5, ["ANNOTATION_CREATED"]])
    def test_webhook_action_not_a_string(self, client, action):
        assert "'action'" in self._error(client.post("/webhook", json={"action": action, "project": {"id": 1}}))

    @pytest.mark.parametrize("project", ["\u0661\u0662", "\u00b2", "0001", "0", "1" * 101, "1" * 13, " 1", "1e3", -1])
    def test_one_project_id_rule_on_every_route(self, fresh_app, project):
        """Unicode digits, a leading zero, absurd lengths: a 400 naming the field everywhere, never a folder."""
        client = fresh_app.test_client()
        calls = [
            ("/setup", {"project": project}),
            ("/predict", predict_body([local_task(1, SMALL)], project=project)),
            ("/versions", {"project": project}),
            ("/rank", {"project": project}),
            ("/webhook", {"action": "START_TRAINING", "project": {"id": project}}),
        ]
        for path, body in calls:
            assert "'project'" in self._error(client.post(path, json=body)), path
        assert "'project'" in self._error(client.get("/versions", query_string={"project": project}))
        assert "'project'" in self._error(client.get(f"/projects/{quote(str(project))}/report"))
        assert [p.name for p in _service(fresh_app).store.root.iterdir() if not p.name.startswith(".")] == []

    @pytest.mark.parametrize("path", ["/predict", "/setup", "/webhook", "/versions"])
    @pytest.mark.parametrize("opening, closing", [("[", "]"), ('{"a":', "}")])
    def test_a_body_nested_100000_deep(self, client, path, opening, closing):
        depth = 100_000
        assert "nested" in self._error(_post_raw(client, path, opening * depth + "1" + closing * depth))

    def test_unknown_route_and_method_are_json(self, client):
        assert self._error(client.get("/nope"), 404)
        assert self._error(client.get("/predict"), 405)


class TestVersionsRoute:
    def test_lists_versions_oldest_first(self, fresh_app):
        store = _service(fresh_app).store
        for _ in range(3):
            store.save("4", {"w": torch.zeros(1)}, VersionMeta(labels=list(LABELS)))
        response = fresh_app.test_client().post("/versions", json={"project": "4.1700000000"})
        body = response.get_json()
        assert body["versions"] == ["v0001", "v0002", "v0003"]
        assert [d["model_version"] for d in body["detail"]] == body["versions"]  # their figures: test_ui.py
        assert _service(fresh_app).registry.serving() == {}

    def test_get_names_every_project_or_one(self, fresh_app):
        store = _service(fresh_app).store
        store.save("4", {"w": torch.zeros(1)}, VersionMeta(labels=list(LABELS)))
        store.save("5", {"w": torch.zeros(1)}, VersionMeta(labels=list(LABELS)))
        store.save("5", {"w": torch.zeros(1)}, VersionMeta(labels=list(LABELS)))
        client = fresh_app.test_client()
        assert client.get("/versions").get_json() == {"versions": ["v0001", "v0002"]}
        assert client.get("/versions?project=4").get_json()["versions"] == ["v0001"]

    def test_project_without_versions(self, fresh_app):
        response = fresh_app.test_client().post("/versions", json={"project": 9})
        assert (response.status_code, response.get_json()) == (200, {"versions": [], "detail": []})


class TestUnexpectedErrors:
    def test_500_is_json_without_traceback(self, fresh_app, monkeypatch, caplog):
        store = _service(fresh_app).store

        def broken(project):
            raise RuntimeError("disk /very/secret/path exploded")

        monkeypatch.setattr(store, "latest", broken)
        with caplog.at_level(logging.ERROR, logger="backend.app"):
            response = fresh_app.test_client().post("/setup", json={"project": "1"})
        assert response.status_code == 500
        assert response.is_json
        assert response.get_json()["status"] == 500
        text = response.get_data(as_text=True)
        assert "Traceback" not in text and "exploded" not in text and "RuntimeError" not in text
        logged = [r for r in caplog.records if r.exc_info]
        assert logged and "exploded" in str(logged[0].exc_info[1])  # the details go to the log


USER, PASSWORD = "ml-user", "Pa55-word-secret"
API_KEY = "legacy-token-abcdef123456"


def _basic(user: str, password: str) -> dict:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.fixture(scope="module")
def auth_app(tmp_path_factory):
    return create_app(
        make_settings(tmp_path_factory.mktemp("auth_models"), basic_auth_user=USER, basic_auth_pass=PASSWORD)
    )


class TestBasicAuth:
    @pytest.mark.parametrize("path", ["/health", "/"])
    def test_right_credentials(self, auth_app, path):
        assert auth_app.test_client().get(path, headers=_basic(USER, PASSWORD)).status_code == 200

    def test_wrong_or_missing_credentials_look_the_same(self, auth_app):
        client = auth_app.test_client()
        attempts = [
            client.get("/health"),
            client.get("/health", headers=_basic(USER, "wrong")),
            client.get("/health", headers=_basic("someone", PASSWORD)),
            client.get("/health", headers=_basic("", "")),
            client.get("/health", headers={"Authorization": f"Bearer {PASSWORD}"}),
            client.get("/health", headers={"Authorization": "Basic not-base64!"}),
        ]
        assert [r.status_code for r in attempts] == [401] * len(attempts)
        bodies = {r.get_data(as_text=True) for r in attempts}
        assert len(bodies) == 1  # nothing tells which part was wrong
        error = attempts[0].get_json()["error"].lower()
        assert "password" not in error and "user" not in error

    @pytest.mark.parametrize("path", ["/setup", "/predict", "/versions"])
    def test_post_routes_need_auth(self, auth_app, path):
        assert auth_app.test_client().post(path, json={"project": "1"}).status_code == 401

    @pytest.mark.parametrize("action", ["ANNOTATION_CREATED", "START_TRAINING", "PROJECT_UPDATED"])
    def test_webhook_acknowledges_without_auth(self, auth_app, action):
        scheduler = _StubScheduler()
        auth_app = create_app(service=replace(_service(auth_app), scheduler=scheduler))
        body = {"action": action, "project": {"id": 1}, "annotation": {"id": 5}, "task": {"id": 7}}
        response = auth_app.test_client().post("/webhook", json=body)
        assert 200 <= response.status_code < 300
        assert response.get_json()["action"] == action
        assert scheduler.events in ([], [("1", action)])  # at most handed on, never run here
        assert _service(auth_app).registry.serving() == {}  # nothing trained nor loaded


class _StubScheduler:
    """Stands in for the job scheduler: records events, starts nothing."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def on_event(self, project: str, action: str) -> str:
        self.events.append((project, action))
        return "counted"


def _formatted(record: logging.LogRecord) -> str:
    return logging.Formatter("%(name)s %(message)s").format(record)


class TestSecretsStayOutOfLogs:
    def test_a_whole_request_cycle(self, tmp_path, caplog, monkeypatch):
        def upload(seen):
            if seen.headers.get("Authorization") == f"Token {API_KEY}":
                return Route(200, image_bytes(48, 32), "image/png")
            return Route(401, b"no")

        routes = {"/storage-data/uploaded/": upload, "/data/upload/1/photo.png": upload}
        caplog.set_level(logging.DEBUG)
        with LocalServer(routes) as ls:
            settings = make_settings(
                tmp_path / "models",
                basic_auth_user=USER,
                basic_auth_pass=PASSWORD,
                label_studio_url=ls.url,
                api_key=API_KEY,
                log_level="DEBUG",
            )
            client = create_app(service=replace(build_service(settings), scheduler=_StubScheduler())).test_client()
            auth = _basic(USER, PASSWORD)
            assert client.get("/health", headers=auth).status_code == 200
            setup = {"project": "1.17", "schema": LABEL_CONFIG, "hostname": ls.url, "access_token": API_KEY}
            assert client.post("/setup", json=setup, headers=auth).status_code == 200
            tasks = [{"id": 1, "data": {"image": "/data/upload/1/photo.png"}}, {"id": 2, "data": {"image": "s3://b/x"}}]
            response = client.post("/predict", json=predict_body(tasks), headers=auth)
            assert (
                client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 1}}).status_code == 200
            )
            assert client.get("/health", headers=_basic(USER, "wrong-" + PASSWORD)).status_code == 401
        assert response.status_code == 200
        _assert_predicted(response.get_json()["results"][0], 48, 32)  # the token was used...
        assert caplog.records
        secrets = [PASSWORD, API_KEY, auth["Authorization"].split()[1]]
        for record in caplog.records:  # ...and never logged
            text = _formatted(record)
            assert not any(secret in text for secret in secrets), text


def _samples(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    out = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class TestMetrics:
    def test_counts_requests_latency_predictions_and_version(self, client):
        before = _samples(client)
        tasks = [local_task(31, SMALL), local_task(32, TEXT)]
        body = client.post("/predict", json=predict_body(tasks)).get_json()
        client.post("/predict", json={"tasks": "nope"})
        after = _samples(client)

        def delta(name, **labels):
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        assert delta("hua_http_requests_total", route="/predict", status="200") == 1
        assert delta("hua_http_requests_total", route="/predict", status="400") == 1
        assert delta("hua_http_request_seconds_count", route="/predict") == 2
        assert delta("hua_http_request_seconds_bucket", route="/predict", le="+Inf") == 2
        assert delta("hua_predictions_total", outcome="ok") == 1
        assert delta("hua_predictions_total", outcome="failed") == 1
        assert delta("hua_task_failures_total", reason="undecodable") == 1
        version = ("hua_model_version_info", (("model_version", body["model_version"]), ("project", "1")))
        assert after[version] == 1.0

    def test_model_version_gauge_keeps_only_the_serving_version(self, fresh_app):
        metrics = _service(fresh_app).metrics
        metrics.set_version("1", "v0001")
        metrics.set_version("1", "v0002")
        metrics.set_version("2", "v0001")
        samples = _samples(fresh_app.test_client())
        versions = {k[1] for k in samples if k[0] == "hua_model_version_info"}
        assert versions == {
            (("model_version", "v0002"), ("project", "1")),
            (("model_version", "v0001"), ("project", "2")),
        }
