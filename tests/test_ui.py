"""/ui, its plot, /projects/<id>/report, /versions' detail and the prequential gauges of /metrics,
with zero, one and many versions, and with Label Studio up, down or not configured."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from PIL import Image

from backend.app import create_app
from backend.jobs.board import JobBoard
from helpers import LocalServer, Route, make_settings
from model.version_meta import VersionMeta
from model.versions import VersionStore
from report_data import FIGURES, PROJECT, QUEUE, populate

USER, PASSWORD = "ml", "s3cret"
AUTH = {"Authorization": "Basic bWw6czNjcmV0"}  # ml:s3cret


def _client(model_dir, **settings):
    app = create_app(make_settings(model_dir, basic_auth_user=USER, basic_auth_pass=PASSWORD, **settings))
    return app.test_client()


@pytest.fixture
def many(tmp_path):
    populate(tmp_path)
    return tmp_path


class TestReport:
    def test_each_version_carries_the_figures_the_next_training_measured(self, many):
        body = _client(many).get(f"/projects/{PROJECT}/report", headers=AUTH).get_json()
        rows = {r["model_version"]: r for r in body["versions"]}
        assert list(rows) == ["v0001", "v0002", "v0003", "v0004"] and body["serving"] == "v0004"
        for name, (map_50, map_, accepted, recall, tasks) in FIGURES.items():
            assert rows[name]["figures"] == {"map_50": map_50, "map": map_, "accepted": accepted, "recall": recall}
            assert rows[name]["evaluation"]["tasks"] == tasks and rows[name]["status"] == "ok"
        assert rows["v0001"]["evaluated_by"] == "v0002" and rows["v0002"]["evaluated_by"] == "v0003"
        assert rows["v0003"]["status"] == "too_few" and rows["v0003"]["figures"] == {}
        assert "at least 5" in rows["v0003"]["message"]
        assert rows["v0004"]["status"] == "not_measured" and rows["v0004"]["evaluation"] is None

    def test_the_queue_head_is_the_lowest_task_score_first_with_its_reasons(self, many):
        body = (
            _client(many, label_studio_url="http://ls.example:8080")
            .get(f"/projects/{PROJECT}/report", headers=AUTH)
            .get_json()
        )
        queue = body["queue"]
        assert queue["model_version"] == "v0004" and queue["ranked"] == len(QUEUE)
        assert [t["task_id"] for t in queue["tasks"]] == sorted(QUEUE, key=lambda t: QUEUE[t][0])
        first = queue["tasks"][0]
        assert first["priority"] == pytest.approx(1 - QUEUE[101][0]) and first["entropy"] == QUEUE[101][1]
        assert first["candidate"] is True and len(first["metrics"]) == 4
        assert first["link"] == f"http://ls.example:8080/projects/{PROJECT}/data?task=101"
        assert queue["tasks"][-1]["metrics"] is None

    def test_jobs_are_in_the_report(self, many):
        jobs = _client(many).get(f"/projects/{PROJECT}/report", headers=AUTH).get_json()["jobs"]
        assert jobs["train"]["status"] == "running" and jobs["train"]["progress"] == 0.25

    def test_a_project_with_nothing(self, tmp_path):
        body = _client(tmp_path).get("/projects/12/report", headers=AUTH).get_json()
        assert body["versions"] == [] and body["serving"] is None and body["latest_evaluation"] is None
        assert body["queue"] == {"model_version": None, "ranked": 0, "tasks": []}

    def test_a_bad_project_id_is_a_400(self, tmp_path):
        assert _client(tmp_path).get("/projects/x1/report", headers=AUTH).status_code == 400


class TestVersionsDetail:
    def test_post_versions_gives_the_figures_too(self, many):
        body = _client(many).post("/versions", json={"project": PROJECT}, headers=AUTH).get_json()
        assert body["versions"] == ["v0001", "v0002", "v0003", "v0004"]
        assert [d["figures"].get("map_50") for d in body["detail"]] == [0.20, 0.45, None, None]

    def test_get_versions_of_one_project_too(self, many):
        body = _client(many).get(f"/versions?project={PROJECT}", headers=AUTH).get_json()
        assert body["detail"][1]["evaluated_by"] == "v0003"


class TestMetrics:
    def test_the_newest_figures_are_gauges(self, many):
        # the newest training measured v0003 on too few tasks: its count, and no figure
        text = _client(many).get("/metrics", headers=AUTH).get_data(as_text=True)
        assert f'hua_prequential_tasks{{model_version="v0003",project="{PROJECT}"}} 2.0' in text
        assert "hua_prequential{" not in text

    def test_figures_replace_the_previous_version(self, tmp_path):
        store = VersionStore(tmp_path)
        populate(tmp_path)
        client = _client(tmp_path)
        client.get("/metrics", headers=AUTH)
        meta = replace(store.latest(PROJECT).meta, evaluation=store.get(PROJECT, "v0003").meta.evaluation)
        store.save(PROJECT, {}, meta)  # v0005 holds v0002's figures again
        text = client.get("/metrics", headers=AUTH).get_data(as_text=True)
        line = f'hua_prequential{{figure="map_50",model_version="v0002",project="{PROJECT}"}} 0.45'
        assert line in text and 'model_version="v0003"' not in text


class TestPage:
    def test_needs_basic_auth(self, tmp_path):
        client = _client(tmp_path)
        refused = client.get("/ui")
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Basic ")  # so that a browser asks for the pair
        assert client.get(f"/ui/projects/{PROJECT}/quality.png").status_code == 401

    def test_zero_projects(self, tmp_path):
        page = _client(tmp_path).get("/ui", headers=AUTH).get_data(as_text=True)
        assert 'id="no-projects"' in page and "1 &minus; priority" in page
        assert "<b>Model weights: random initialisation (configured: WEIGHTS=none)</b>: no pre-annotations" in page

    def test_the_weights_banner_says_what_a_random_start_means(self, tmp_path):
        meta = VersionMeta(labels=["car"], backbone="b", weights="none", weights_requested="coco", parent=None)
        VersionStore(tmp_path).save("5", {}, meta)
        page = _client(tmp_path).get("/ui", headers=AUTH).get_data(as_text=True)
        banner = page.split('id="weights">')[1].split("</p>")[0]
        assert (
            "<b>Model weights: random initialisation (coco weights were asked for but could not be had)</b>: "
            "no pre-annotations until the first trainings."
        ) in banner
        assert 'class="weights fell-back"' in page
        assert "Serving v0001, started from <b>random initialisation" in page

    def test_the_weights_banner_names_a_pretrained_start(self, tmp_path):
        meta = VersionMeta(labels=["car"], backbone="b", weights="coco", weights_requested="coco", parent=None)
        VersionStore(tmp_path).save("5", {}, meta)
        page = _client(tmp_path).get("/ui", headers=AUTH).get_data(as_text=True)
        assert "<b>Model weights: COCO weights (b)</b>: pre-annotations from the start" in page
        assert 'class="weights" id="weights"' in page  # not marked as a fallback

    def test_one_time_zone_and_format(self, many):
        page = _client(many).get("/ui", headers=AUTH).get_data(as_text=True)
        assert "All times on this page are UTC." in page
        started = JobBoard(many).read(PROJECT, "train").started
        shown = datetime.fromisoformat(started).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        assert f'<td class="text">{shown}</td>' in page
        assert "toLocaleTimeString" not in page and 'toISOString().slice(0, 19).replace("T", " ") + " UTC' in page

    def test_one_version_not_measured_yet(self, tmp_path):
        VersionStore(tmp_path).save("5", {}, VersionMeta(labels=["car"], backbone="b", parent=None))
        page = _client(tmp_path).get("/ui", headers=AUTH).get_data(as_text=True)
        assert 'data-version="v0001"' in page and "not measured yet" in page
        assert "Not ranked yet" in page and "No job has run" in page
        assert "unknown weights" in page  # a meta that does not say where its weights came from

    def test_many_versions_figures_queue_and_jobs(self, many):
        page = _client(many).get("/ui", headers=AUTH).get_data(as_text=True)
        assert page.count("data-version=") == 4 and "v0004 (serving)" in page
        assert '<td class="fig-map_50">45.0 %</td>' in page and '<td class="fig-accepted">30.0 %</td>' in page
        assert "figures need at least 5" in page
        assert page.count('class="queued-task"') == len(QUEUE)
        assert '<progress max="1" value="0.25">' in page
        assert "<script src" not in page and "http" not in page.split("<script>")[1]  # nothing from elsewhere

    def test_label_studio_down_still_renders(self, many):
        page = _client(many, label_studio_url="http://127.0.0.1:9").get("/ui", headers=AUTH)
        assert page.status_code == 200
        text = page.get_data(as_text=True)
        assert "label-studio-down" in text and "45.0 %" in text

    def test_label_studio_up_gives_title_and_counts(self, many):
        answer = {"id": 3, "title": "Street scenes", "task_number": 40, "num_tasks_with_annotations": 12}
        with LocalServer(
            {f"/api/projects/{PROJECT}/": Route(200, json.dumps(answer).encode(), "application/json")}
        ) as ls:
            text = _client(many, label_studio_url=ls.url).get("/ui", headers=AUTH).get_data(as_text=True)
        assert "Project 3: Street scenes" in text and "12 of 40 tasks annotated" in text
        assert f'href="{ls.url}/projects/3/data?task=101"' in text

    def test_the_plot_is_a_png(self, many, tmp_path):
        for model_dir in (many, tmp_path / "empty"):
            response = _client(model_dir).get(f"/ui/projects/{PROJECT}/quality.png", headers=AUTH)
            assert response.status_code == 200 and response.mimetype == "image/png"
            assert Image.open(io.BytesIO(response.data)).size == (520, 300)
