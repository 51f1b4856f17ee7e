"""``--engine ray`` on a local Ray instance: same bytes, manifest and resume rules as local."""

from __future__ import annotations

import json
import pickle
import sys
import time

import pytest

pytest.importorskip("ray.data", reason="Ray Data is an optional extra: pip install 'tokedit[ray]'")
# Ray Data's own DataContext copies trip its deprecation shims; not tokedit's concern.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")

from scale_helpers import (  # noqa: E402
    free_port,
    invoke,
    manifest_shards,
    mixed_corpus,
    output_files,
    score_args,
    temp_files,
)

from tokedit.engines.ray_engine import (  # noqa: E402
    check_reachable,
    default_resources,
    import_ray,
)
from tokedit.errors import InputError  # noqa: E402
from tokedit.scoring.run import ShardScorer  # noqa: E402
from tokedit.scoring.scorer import ScoreOptions  # noqa: E402


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module (2 CPUs, as on the CI machine); shut down after."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory, plays):
    return mixed_corpus(tmp_path_factory.mktemp("ray-data"), plays, chars_per_shard=12_000)


@pytest.fixture(scope="module")
def local_out(tmp_path_factory, data, tiny_prior):
    out = tmp_path_factory.mktemp("ray-local") / "scores"
    r = invoke(*score_args(data, out, tiny_prior))
    assert r.returncode == 0, r.stderr
    return out


def test_ray_output_is_byte_identical_to_local(tmp_path, ray_local, data, local_out, tiny_prior):
    out = tmp_path / "scores"  # two actors write concurrently; the driver records entries
    r = invoke(*score_args(data, out, tiny_prior, "--engine", "ray", "--ray-actors", "2"))
    assert r.returncode == 0, r.stderr
    assert "0 shard(s) already done" in r.stdout
    assert output_files(out) == output_files(local_out)
    assert len(output_files(out)) == 4
    assert manifest_shards(out) == manifest_shards(local_out)
    ray_manifest = json.loads((out / "manifest.json").read_text())
    local_manifest = json.loads((local_out / "manifest.json").read_text())
    assert ray_manifest["options"] == local_manifest["options"]
    assert ray_manifest["totals"] == local_manifest["totals"]
    assert ray_manifest["info"]["device"] == "cpu"  # reported by the actor that scored
    assert not temp_files(out)


def test_engines_resume_each_other(tmp_path, ray_local, data, local_out, tiny_prior):
    out = tmp_path / "scores"
    half = invoke(*score_args(data, out, tiny_prior, "--num-shards", "2", "--shard-index", "0"))
    assert half.returncode == 0, half.stderr
    assert len(manifest_shards(out)) == 2
    rest = invoke(*score_args(data, out, tiny_prior, "--engine", "ray"))
    assert rest.returncode == 0, rest.stderr
    assert "resumed: 2 shard(s) already complete" in rest.stderr
    assert "2 shard(s) already done" in rest.stdout
    assert output_files(out) == output_files(local_out)
    assert manifest_shards(out) == manifest_shards(local_out)
    again = invoke(*score_args(data, out, tiny_prior, "--engine", "ray"))
    assert again.returncode == 0 and "scored 0 documents" in again.stdout
    refused = invoke(*score_args(data, out, tiny_prior, "--engine", "ray", "--top-k", "4"))
    assert refused.returncode == 2
    assert "other options (top_k: 8 -> 4)" in refused.stderr and "Traceback" not in refused.stderr


def test_actor_errors_read_like_local_errors(tmp_path, ray_local, tiny_prior):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"id": "a", "text": "To be, or not to be"}\n')
    (data / "b.jsonl").write_text('{"id": "b", "text": "ok"}\n{"id": oops}\n')
    out = tmp_path / "out"
    local = invoke(*score_args(data, tmp_path / "local", tiny_prior))
    ray = invoke(*score_args(data, out, tiny_prior, "--engine", "ray"))
    assert local.returncode == ray.returncode == 2
    for r in (local, ray):
        assert "b.jsonl:2: malformed JSON" in r.stderr and "fix:" in r.stderr
        assert "Traceback" not in r.stderr
    assert "b.jsonl" not in manifest_shards(out)
    assert not (out / "b.parquet").exists() and not temp_files(out)


def test_missing_ray_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError) as e:
        import_ray()
    assert "pip install 'tokedit[ray]'" in str(e.value)


def test_unreachable_cluster_fails_fast():
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"cannot reach a Ray cluster at 127\.0\.0\.1:\d+"):
        check_reachable(f"127.0.0.1:{free_port()}")
    assert time.perf_counter() - started < 5


def test_bad_actor_count_is_refused(tmp_path, data, tiny_prior):
    r = invoke(
        *score_args(data, tmp_path / "o", tiny_prior, "--engine", "ray", "--ray-actors", "0")
    )
    assert r.returncode == 2 and "--ray-actors 0 must be >= 1" in r.stderr


def test_default_pool_leaves_a_cpu_and_uses_every_gpu():
    assert default_resources({"CPU": 2.0}, None) == (1, {"num_cpus": 1})
    assert default_resources({"CPU": 1.0}, None) == (1, {"num_cpus": 1})
    assert default_resources({"CPU": 16.0}, 3) == (3, {"num_cpus": 1})
    assert default_resources({"CPU": 64.0, "GPU": 8.0}, None) == (8, {"num_cpus": 1, "num_gpus": 1})


def test_shard_scorer_pickles_its_configuration_only(tmp_path, tiny_prior):
    s = ShardScorer(str(tmp_path), str(tiny_prior), ScoreOptions().resolved(128)).load()
    s.on_tokens = print
    blob = pickle.dumps(s)
    assert len(blob) < 2000  # no model, no tokenizer, no callback
    copy = pickle.loads(blob)
    assert copy == s and copy._scorer is None and copy.on_tokens is None
