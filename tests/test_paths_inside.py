"""tokedit writes, reads back and deletes only inside --out: a manifest that names a path
outside it (edited by hand, or copied from elsewhere) and a symbolic link inside the output
that leads out are refused before anything is written or deleted."""

from __future__ import annotations

import json

import pytest
from scale_helpers import invoke, write_rows

from tokedit.errors import OutputError
from tokedit.io.manifest import manifest_path
from tokedit.io.write import inside


@pytest.fixture
def scored(tmp_path, tiny_prior):
    data = tmp_path / "data"
    write_rows(data / "a.jsonl", [{"text": "To be, or not to be, that is the question."}])
    out = tmp_path / "out"
    r = invoke("score", data, "--model", tiny_prior, "--out", out, "-q")
    assert r.returncode == 0, r.stderr
    victim = tmp_path / "victim.txt"
    victim.write_text("a user's file")
    return data, out, victim


def point_outputs_at(out, rel) -> None:
    path = manifest_path(out)
    manifest = json.loads(path.read_text())
    manifest["shards"]["a.jsonl"]["outputs"] = [rel]
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_a_manifest_naming_a_path_outside_out_deletes_nothing(scored, tiny_prior, kind):
    data, out, victim = scored
    point_outputs_at(out, "../victim.txt" if kind == "dotdot" else str(victim))
    for extra in ((), ("--overwrite",)):  # resume reads the path back; --overwrite deletes it
        r = invoke("score", data, "--model", tiny_prior, "--out", out, "-q", *extra)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "not inside" in r.stderr and "manifest.json" in r.stderr and "fix:" in r.stderr
        assert victim.read_text() == "a user's file"


def test_a_link_in_the_output_that_leads_out_is_refused(tmp_path, scored):
    data, scores, _ = scored
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "edited"
    args = ("edit", data, "--scores", scores, "--out", out, "--p", "0.5,0.9", "-q")
    assert invoke(*args).returncode == 0
    for f in (out / "p=0.5").iterdir():
        f.unlink()
    (out / "p=0.5").rmdir()
    (out / "p=0.5").symlink_to(elsewhere)  # the rerun would write the shard again, there
    r = invoke(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "resolves to" in r.stderr and str(elsewhere) in r.stderr and "fix:" in r.stderr
    assert list(elsewhere.iterdir()) == []


def test_inside_accepts_paths_below_and_refuses_the_rest(tmp_path):
    assert inside(tmp_path, "p=0.5/a.parquet") == tmp_path / "p=0.5" / "a.parquet"
    assert inside(tmp_path, "sub/dir/a..b.jsonl") == tmp_path / "sub" / "dir" / "a..b.jsonl"
    for rel in ("", "../x", "a/../../x", "/etc/passwd", "a\\..\\..\\x", "C:/x"):
        with pytest.raises(OutputError, match="not inside"):
            inside(tmp_path, rel, named_by="m.json")
