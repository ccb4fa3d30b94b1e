"""/ui in a real browser: headless Chromium (Debian's) driven by Playwright, against the
backend's app served over HTTP on a model folder a few trainings left (tests/report_data.py)."""

from __future__ import annotations

import re
import threading

import pytest
from werkzeug.serving import make_server

from backend.app import create_app
from backend.jobs.board import JobBoard
from browser import (
    backend_json,
    check_plot,
    check_versions_table,
    chromium_or_skip,
    open_ui,
    progress_of,
    screenshot,
    wait_for_progress,
)
from helpers import make_settings
from report_data import PROJECT, QUEUE, populate

pytestmark = [pytest.mark.slow, pytest.mark.browser]

AUTH = ("ml", "s3cret")


@pytest.fixture
def served(tmp_path):
    """The app on a free port of 127.0.0.1, in a thread, with basic auth and an unreachable Label Studio."""
    populate(tmp_path)
    settings = make_settings(
        tmp_path, basic_auth_user=AUTH[0], basic_auth_pass=AUTH[1], label_studio_url="http://127.0.0.1:9"
    )
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", tmp_path
    finally:
        server.shutdown()


def test_the_page_shows_what_the_json_says_and_follows_the_jobs(served):
    sync_playwright = chromium_or_skip()
    url, model_dir = served
    report = backend_json(url, f"/projects/{PROJECT}/report", AUTH)
    jobs = backend_json(url, "/jobs", AUTH)["jobs"][PROJECT]
    with sync_playwright() as playwright:
        browser, page = open_ui(playwright, url, AUTH)
        try:
            check_versions_table(page, report)
            check_plot(page, PROJECT)
            assert progress_of(page, PROJECT, "train") == jobs["train"]["progress"] == 0.25
            assert page.locator("tr.queued-task").count() == len(QUEUE)
            assert page.locator(".label-studio-down").count() == 1
            board = JobBoard(model_dir)
            record = board.read(PROJECT, "train")
            record.progress, record.message = 0.6, "step 12/20"
            board.write(record)
            wait_for_progress(page, PROJECT, "train", 0.6)
            assert page.locator('tr.job[data-kind="train"] .job-message').inner_text() == "step 12/20"
            # which weights the model started from, near the top and visible, in the report's words
            banner = page.locator("#weights")
            assert banner.is_visible() and report["weights"]["source"] in banner.inner_text()
            assert banner.inner_text().startswith("Model weights: trained version v0004")
            # one time zone and format on the page, the script's line included (whatever the browser's zone)
            assert re.fullmatch(
                r"Jobs updated \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\.", page.locator("#poll-state").inner_text()
            ), page.locator("#poll-state").inner_text()
            assert "2026-12-01 10:00:00 UTC" in page.locator('tr.job[data-kind="train"]').inner_text()
            screenshot(page, "ui-constructed")
        finally:
            browser.close()
