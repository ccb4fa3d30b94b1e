"""Headless Chromium (Debian's package) driven by Playwright, for the /ui tests.

Playwright cannot download its own browser here; it launches the system one.
``chromium_or_skip`` skips a test, saying why, where either is missing (the
Makefile's ``chromium`` target installs the browser; ``playwright`` is pinned
in requirements.txt). Screenshots go to tests/artifacts/ (or $UI_ARTIFACTS).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("UI_ARTIFACTS", Path(__file__).resolve().parent / "artifacts"))
VIEWPORT = {"width": 1280, "height": 800}
WAIT_MS = 20_000  # how long to wait for the page to follow /jobs: a bound, not a measurement


def chromium_or_skip():
    """Playwright's sync API, or a skip that says what is missing and how to get it."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -r requirements.txt")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `make chromium` (apt-get install chromium) could not install it")
    return sync_playwright


def open_ui(playwright, base_url: str, auth: tuple[str, str]):
    """A page of /ui at 1280x800 in a fresh headless Chromium, with the basic-auth pair."""
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
    context = browser.new_context(http_credentials={"username": auth[0], "password": auth[1]}, viewport=VIEWPORT)
    page = context.new_page()
    response = page.goto(f"{base_url}/ui")
    assert response is not None and response.status == 200, response and response.status
    return browser, page


def check_versions_table(page, report: dict) -> None:
    """The page's versions table shows the report's versions, newest first, with its figures as percentages."""
    section = page.locator(f"#project-{report['project']}")
    rows = section.locator("tr.version")
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.version)") == [
        v["model_version"] for v in reversed(report["versions"])
    ]
    for version in report["versions"]:
        row = section.locator(f'tr.version[data-version="{version["model_version"]}"]')
        for figure, value in version["figures"].items():
            assert row.locator(f"td.fig-{figure}").inner_text() == f"{100 * value:.1f} %"
        if not version["figures"]:
            assert row.locator(".fig-none").inner_text().strip() == version["message"]


def check_plot(page, project: str) -> None:
    """The learning curve's image loaded (the browser decoded a PNG from the backend)."""
    size = page.locator(f"#project-{project} img.plot").evaluate("img => img.complete ? img.naturalWidth : 0")
    assert size == 520, size


def progress_of(page, project: str, kind: str) -> float:
    """The bar of a job, as the page shows it now."""
    bar = page.locator(f'tr.job[data-project="{project}"][data-kind="{kind}"] progress')
    return float(bar.evaluate("p => p.value"))


def wait_for_progress(page, project: str, kind: str, value: float) -> None:
    """Wait until the page's bar shows ``value`` by itself (its script polls /jobs)."""
    page.wait_for_function(
        "([project, kind, value]) => { const p = document.querySelector("
        '`tr.job[data-project="${project}"][data-kind="${kind}"] progress`); '
        "return p !== null && Math.abs(p.value - value) < 1e-6; }",
        arg=[project, kind, value],
        timeout=WAIT_MS,
    )


def screenshot(page, name: str) -> Path:
    """The 1280x800 view and the whole page, under ARTIFACTS; returns the view's path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    view = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(view))
    page.screenshot(path=str(ARTIFACTS / f"{name}-full.png"), full_page=True)
    return view


def backend_json(base_url: str, path: str, auth: tuple[str, str]) -> dict:
    response = requests.get(f"{base_url}{path}", auth=auth, timeout=30)
    assert response.status_code == 200, response.text[:300]
    return response.json()
