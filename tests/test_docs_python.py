"""docs/python.md runs: its Python examples, in order, in one fresh interpreter, with the
prior ``"gemma-3-270m"`` replaced by the tiny prior (so the page cannot drift from the code)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).parent.parent / "docs" / "python.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_examples_of_docs_python_run(tmp_path, tiny_prior):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 5
    script = "\n\n".join(blocks).replace('"gemma-3-270m"', repr(str(tiny_prior)))
    assert str(tiny_prior) in script  # the page loads the prior by its name
    (tmp_path / "examples.py").write_text(script)
    r = subprocess.run(
        [sys.executable, str(tmp_path / "examples.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "tokens scored;" in r.stdout and "report.html" in r.stdout
