"""docs/architecture.md's Layout section names every module of backend/, model/ and demo/, and only those.

A newcomer finds each concern by its file name there; a file moved or added
without its line (or a line left for a file that is gone) fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("backend", "model", "demo")
ENTRY = re.compile(r"^- `((?:backend|model|demo)/[\w/]+\.py)`: \S")


def _layout_section() -> list[str]:
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.splitlines()


def _modules() -> set[str]:
    """Every module with code (an empty ``__init__.py`` holds nothing to describe)."""
    found = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if path.name == "__init__.py" and not path.read_text().strip():
                continue
            found.add(path.relative_to(REPO).as_posix())
    return found


def test_every_module_has_one_line_saying_what_it_holds():
    listed = [m.group(1) for line in _layout_section() if (m := ENTRY.match(line))]
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert set(listed) == _modules()


def test_model_knows_nothing_of_http_or_label_studio():
    for path in (REPO / "model").rglob("*.py"):
        source = path.read_text()
        assert not re.search(r"^\s*(from|import) (backend|flask|label_studio_sdk|requests)\b", source, re.M), path
