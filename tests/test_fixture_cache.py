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
    # files far from the trainer shape the prior too: the reader of the corpus, the
    # tokenizer's training, the model's code
    for rel in ("io/read.py", "io/texts.py", "training/prior.py", "scoring/hf.py", "demo.py"):
        path = package / rel
        source = path.read_bytes()
        path.write_bytes(source + b"\n# changed\n")
        assert code_key("config", package) != base, rel
        path.write_bytes(source)
        assert code_key("config", package) == base, rel
    (package / "io" / "new_module.py").write_text("X = 1\n")
    assert code_key("config", package) != base
