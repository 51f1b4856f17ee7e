"""The tiny prior of the fixtures is cached on disk: its key must change with anything that
shapes it, or a change to the code leaves the suite testing a stale model."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import code_key

import tokedit


def test_the_prior_cache_key_follows_every_source_file_and_the_config(tmp_path):
    package = tmp_path / "tokedit"
    shutil.copytree(
        Path(tokedit.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    base = code_key("config", package)
    assert code_key("config", package) == base  # stable
    assert code_key("other config", package) != base
    # every source file, also those far from the trainer (the reader of the corpus, the
    # tokenizer's training, the model's code): a change to any one changes the key
    sources = sorted(package.rglob("*.py"))
    assert len(sources) > 50 and package / "io" / "read.py" in sources
    for path in sources:
        source = path.read_bytes()
        path.write_bytes(source + b"\n# changed\n")
        assert code_key("config", package) != base, path
        path.write_bytes(source)
    assert code_key("config", package) == base
    (package / "io" / "new_module.py").write_text("X = 1\n")
    assert code_key("config", package) != base
