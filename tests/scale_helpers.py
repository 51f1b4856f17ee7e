"""Helpers shared by the test modules (not a test module): one home for each.

Corpus writers, CLI runners (in this process, :func:`invoke`; in another, :func:`run_cli`),
the arguments of ``tokedit score`` / ``tokedit edit`` runs, output comparisons, the
byte-exact check of edited text and the fingerprint of a saved checkpoint.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from click.testing import CliRunner

from tokedit.cli import main
from tokedit.io.manifest import find_manifest, read_manifest
from tokedit.io.texts import split_documents

FORMATS = ("parquet", "jsonl", "jsonl.gz", "jsonl.zst")


def write_rows(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as the format named by ``path``'s suffix (deterministic bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
        return
    data = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)


def mixed_corpus(out: Path, plays: dict[str, str], chars_per_shard: int) -> Path:
    """One shard per input format, each about ``chars_per_shard`` characters, with ids."""
    docs = [d for text in plays.values() for d in split_documents(text)]
    at = 0
    for k, fmt in enumerate(FORMATS):
        rows, size = [], 0
        while size < chars_per_shard:
            text = docs[at % len(docs)]
            rows.append({"id": f"doc-{at}", "text": text})
            size += len(text)
            at += 1
        write_rows(out / f"part-{k}.{fmt}", rows)
    return out


def score_args(
    data: Path, out: Path, prior: Path, *extra: str, id_column: str | None = "id"
) -> list[str]:
    """``tokedit score`` arguments with small windows; ``id_column=None``: no --id-column."""
    ids = ["--id-column", id_column] if id_column else []
    return [
        "score",
        str(data),
        "--model",
        str(prior),
        "--out",
        str(out),
        "--max-length",
        "128",
        "--overlap",
        "32",
        *ids,
        "-q",
        *map(str, extra),
    ]


def edit_args(data: Path, out: Path, *extra) -> list[str]:
    """``tokedit edit DATA --out OUT -q`` and ``extra`` (``--scores S`` or ``--model M``, ...)."""
    return ["edit", str(data), "--out", str(out), "-q", *map(str, extra)]


def assert_edits_byte_exact(tokenizer, original, edited, edits, metaspace=False) -> None:
    """Every character outside the edits is the input's; each edit holds the new token's
    text, and a deletion (``new_id`` -1) removes exactly its span. Edits are in document
    order (as ``tokedit_edits`` is documented) and do not overlap.

    Token texts are computed here independently of tokedit's Renderer: from the token string
    with the byte-level alphabet, or "▁" -> " " for Metaspace (no space at the document start).
    """
    from tokenizers import decoders

    def token_text(tid, at_start):
        s = tokenizer.convert_ids_to_tokens(int(tid))
        if metaspace:
            s = s.replace("▁", " ")
            return s[1:] if at_start and s.startswith(" ") else s
        return decoders.ByteLevel().decode([s])

    positions = [e["pos"] for e in edits]
    assert positions == sorted(set(positions)), "edits out of document order"
    pieces, last = [], 0
    for e in edits:
        assert e["char_start"] >= last and e["char_end"] > e["char_start"]
        at0 = e["pos"] == 0
        assert original[e["char_start"] : e["char_end"]] == token_text(e["orig_id"], at0)
        if e["new_id"] == -1:  # a deletion (--drop-below): the span is cut out
            new = ""
        else:
            new = token_text(e["new_id"], at0)
            assert new and "\ufffd" not in new
        pieces += [original[last : e["char_start"]], new]
        last = e["char_end"]
    pieces.append(original[last:])
    assert edited == "".join(pieces)
    edited.encode("utf-8")  # whole characters only


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tokedit.cli", *args]


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """The CLI in a separate process."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, **kwargs)


def invoke(*args) -> subprocess.CompletedProcess:
    """The CLI in this process (fast): returncode, stdout and stderr like a process.

    Arguments may be paths or numbers: each is passed as ``str``."""
    r = CliRunner().invoke(main, [str(a) for a in args])
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def output_files(out: Path) -> dict[str, bytes]:
    """Every data file of an output directory: nothing hidden (manifest, lock, temp files),
    and not the root ``manifest.json`` of a directory written before ``.tokedit/``."""
    return {
        rel: p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(out).parts)
        and (rel := p.relative_to(out).as_posix()) != "manifest.json"
    }


def manifest_shards(out: Path) -> dict:
    return read_manifest(out)["shards"]


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def independent_weights_sha(model_dir) -> str:
    """The fingerprint of a saved checkpoint, computed here from the loaded model (the same
    recipe as ``weights_sha``, written out again: names in order, float32 bytes)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    h = hashlib.sha256()
    for name in sorted(model.state_dict()):
        h.update(name.encode())
        h.update(model.state_dict()[name].to(torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- kills at points of a run's progress


def recorded_in(out: Path):
    """A probe of a local run's progress: the shards the manifest of ``out`` records now."""
    return lambda: set(manifest_shards(out)) if find_manifest(out) is not None else set()


def progress_timeline(args: list[str], progress, env: dict | None = None) -> list[float]:
    """Run the CLI to its end in its own process, polling ``progress()`` (what the run has
    done so far: the shards its manifest records, the files it wrote); the seconds after the
    start at which it had done 1, 2, ... of them."""
    t0 = time.perf_counter()
    proc = _start(args, env)
    times: list[float] = []
    while proc.poll() is None:
        times += [time.perf_counter() - t0] * (len(progress()) - len(times))
        time.sleep(0.005)
    assert proc.returncode == 0, _stderr(proc)
    return times + [time.perf_counter() - t0] * (len(progress()) - len(times))


def _start(args: list[str], env: dict | None) -> subprocess.Popen:
    """The CLI in its own process, its stderr in a file (a pipe nobody reads could fill up
    and block it)."""
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(cli_command(*args), stdout=subprocess.DEVNULL, stderr=err, env=env)
    proc.err_file = err
    return proc


def _stderr(proc: subprocess.Popen) -> str:
    proc.err_file.seek(0)
    return proc.err_file.read().decode(errors="replace")


def seeded_point(seed: int, timeline: list[float]) -> tuple[int, float]:
    """A kill point drawn from ``seed``: once ``k`` of the ``n`` steps of ``timeline`` are
    done (1 <= k < n), then a delay up to the median time of a step, so that the kill lands
    between two steps or within one."""
    rng = random.Random(seed)
    steps = [b - a for a, b in zip(timeline[:-1], timeline[1:], strict=True)]
    return rng.randint(1, len(timeline) - 1), rng.uniform(0.0, statistics.median(steps))


def kill_at(
    args: list[str], progress, after: int, delay: float = 0.0, env: dict | None = None
) -> set[str] | None:
    """Start the CLI in its own process; once ``progress()`` holds ``after`` items, wait
    ``delay`` s, stop the process (SIGSTOP: it writes nothing more), read ``progress()`` and
    ``kill -9`` it. What it had done when it was stopped, or None when it ended before."""
    proc = _start(args, env)
    try:
        deadline = time.time() + 240
        while len(progress()) < after:
            if proc.poll() is not None:
                assert proc.returncode == 0, _stderr(proc)
                return None
            assert time.time() < deadline, "the run never reached the kill point"
            time.sleep(0.005)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGSTOP)
        if proc.poll() is not None:
            return None  # ended before the kill
        return progress()
    finally:
        proc.kill()
        proc.wait()


def kill_mid_run(args, progress, names, point, reset, env=None) -> str:
    """:func:`kill_at` at ``point`` (``(after, delay)``, see :func:`seeded_point`), again
    with the delay halved after ``reset()`` (the output removed) when the run ended or had
    done all of ``names`` first (4 tries); then, at the kill, at least one
    of ``names`` is done and one is not."""
    after, delay = point
    for _ in range(4):
        done = kill_at(args, progress, after, delay, env)
        if done is not None and set(names) - done:
            break
        reset()
        delay /= 2
    assert done is not None, f"each run ended or missed the point after {after} + {delay:.2f} s"
    todo = sorted(set(names) - done)
    assert done and todo, f"killed with {sorted(done)} done and {todo} not: nothing was tested"
    return f"killed after {after} + {delay:.2f} s with {sorted(done)} done and {todo} not"


# ----------------------------------------------------------------- code that must never run


class PickleBomb:
    """Unpickled, it runs code: it appends to ``marker`` (``pickle`` calls ``exec``)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'a').write('unpickled\\n')",))


def pickle_bomb_bytes(marker: Path, protocol: int = pickle.HIGHEST_PROTOCOL) -> bytes:
    """Pickle bytes that write ``marker`` when unpickled (protocol 0 is ASCII, the rest binary)."""
    return pickle.dumps({"weights": PickleBomb(marker)}, protocol=protocol)


def write_custom_code_model(prior: Path, dest: Path, marker: Path) -> Path:
    """``prior`` (a Llama directory) copied to ``dest`` as a model that ships its own code,
    as hub models with an ``auto_map`` do: a config, a model and a tokenizer class of its
    own (``configuration_custom.py``, ``modeling_custom.py``, ``tokenization_custom.py``),
    subclasses of transformers' Llama and fast tokenizer with the same weights and
    vocabulary. Each module appends its name to ``marker`` when imported."""
    shutil.copytree(prior, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(
        model_type="custom_llama",  # not a type transformers knows: only its code reads it
        architectures=["CustomForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
        },
    )
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    tok_config = json.loads((dest / "tokenizer_config.json").read_text())
    tok_config.pop("tokenizer_class", None)
    tok_config["auto_map"] = {"AutoTokenizer": [None, "tokenization_custom.CustomTokenizerFast"]}
    (dest / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    ran = (
        f"with open({str(marker)!r}, 'a') as f:\n    f.write(__name__.rsplit('.', 1)[-1] + '\\n')\n"
    )
    modules = {
        "configuration_custom": "from transformers import LlamaConfig\n\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom_llama'\n",
        "modeling_custom": "from transformers import LlamaForCausalLM\n"
        "from .configuration_custom import CustomConfig\n\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n",
        "tokenization_custom": "from transformers import PreTrainedTokenizerFast\n\n"
        "class CustomTokenizerFast(PreTrainedTokenizerFast):\n    pass\n",
    }
    for name, code in modules.items():
        (dest / f"{name}.py").write_text(ran + code)
    return dest


def init_local_ray():
    """A local Ray instance in this process, sized as tokedit sizes its own (cores + 1
    CPUs), quiet; returns the ``ray`` module."""
    import ray

    ray.init(
        address="local",
        num_cpus=(os.cpu_count() or 1) + 1,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
    )
    return ray
