"""The README's settings table and links, against the code and the tree.

Every variable of ``backend.settings.ENVIRONMENT`` has a row (and no row names a
variable the code no longer reads); every relative link of README.md and docs/
points at a file that exists.
"""

from __future__ import annotations

import re
from pathlib import Path

from backend.settings import ENVIRONMENT

REPO = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| ((?:`[A-Z_]+`(?:, )?)+)(?: \*)? \|")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _settings_rows() -> list[str]:
    section = (REPO / "README.md").read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    names = []
    for line in section.splitlines():
        if match := ROW.match(line):
            names += re.findall(r"`([A-Z_]+)`", match.group(1))
    return names


def test_the_settings_table_lists_every_variable_once():
    names = _settings_rows()
    assert len(names) == len(set(names)), "a variable is listed twice"
    assert set(names) == set(ENVIRONMENT)


def test_settings_table_cells_are_one_line():
    section = (REPO / "README.md").read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        if line.startswith("| `"):
            assert len(line) <= 200, line


def test_relative_links_point_at_files():
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in LINK.findall(page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name}: {target}"
