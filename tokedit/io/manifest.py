"""The manifest of an output directory: options, and one completion entry per shard
(docs/architecture.md, "One owner for each file format"; on object stores, "Where object
stores differ").

A shard is complete only when its entry is in the manifest (written after the shard file
was renamed into place). Re-running with the same options skips complete shards; re-running
with other options refuses unless ``overwrite``, but only once a shard is complete: the
options of a run that wrote no shard are replaced by the next run's. Several processes
(``--num-shards``) may share one output directory: entries are merged under an exclusive file lock.

Everything that is not data lives in the hidden directory ``OUT/.tokedit/`` (the manifest
``OUT/.tokedit/manifest.json``, its lock, the manifest's temporary files), where the
loaders people train from (``datasets``, polars, DuckDB, Spark) do not look: they skip
hidden files and directories, so ``load_dataset("parquet", data_dir=OUT)`` reads shards only.
Shard temporary files are hidden too (``.NAME.PID-HOST.tmp``, see :mod:`tokedit.io.write`).

Directories written before this layout have ``OUT/manifest.json``. Readers (``edit
--scores``, ``report``) read such a manifest where it is and change nothing; a run that
writes into such a directory (a resume) first moves it to ``OUT/.tokedit/manifest.json``
(written there, then the old file removed, under the lock), so the directory becomes
loadable. :func:`find_manifest` is the one place that knows where a manifest is.

On an object store (an ``s3://``... output, see :mod:`tokedit.io.storage`) there is no
``fcntl`` lock and no rename, so the manifest is split in objects that are each written by
ONE upload (a PUT is all or nothing) and never by two processes at once:

* ``OUT/.tokedit/manifest.json``: the header (command, options, info, totals, and a snapshot
  of the shard entries its writer knew of);
* ``OUT/.tokedit/shards/<rel, %-quoted>.json``: one completion entry per shard, written by
  the process that completed the shard, after the shard was published, tagged with a hash
  of the options it was written with.

A reader merges them: the entries of ``shards/`` are the truth about which shards are
complete (they override the header's snapshot). Several processes (``--num-shards``
tasks, the Ray driver) therefore share one output prefix without a lock: each writes only
the entries of its own shards. A process that creates the header reads it back and refuses
to go on if a concurrent process created it with other options.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from tokedit import __version__
from tokedit.errors import OutputError, arg
from tokedit.io.runs import RUNS_DIR, claim, remove_record, this_run
from tokedit.io.storage import (
    as_path,
    children,
    find,
    is_remote,
    read_bytes_or_none,
    storage_errors,
)
from tokedit.io.write import inside, write_json

META_DIR = ".tokedit"
MANIFEST_NAME = "manifest.json"
LOCK_NAME = "manifest.lock"
ENTRIES_DIR = "shards"  # object stores: one entry object per complete shard
_LEGACY_LOCK_NAME = ".manifest.lock"


def manifest_path(out_dir: str | os.PathLike) -> Path:
    """Where tokedit writes the manifest of ``out_dir``: ``out_dir/.tokedit/manifest.json``."""
    return as_path(out_dir) / META_DIR / MANIFEST_NAME


def entry_path(out_dir, shard_rel: str):
    """Object stores: the completion entry of one shard, ``OUT/.tokedit/shards/<rel>.json``."""
    return as_path(out_dir) / META_DIR / ENTRIES_DIR / (quote(shard_rel, safe="") + ".json")


def legacy_manifest_path(out_dir: str | os.PathLike) -> Path:
    """Where tokedit wrote manifests before ``.tokedit/``: ``out_dir/manifest.json``."""
    return as_path(out_dir) / MANIFEST_NAME


def find_manifest(out_dir: str | os.PathLike) -> Path | None:
    """The manifest file of ``out_dir``: ``.tokedit/manifest.json``, else an old-style
    ``manifest.json`` at the root, else ``None``. Every reader of a manifest goes through here."""
    for path in (manifest_path(out_dir), legacy_manifest_path(out_dir)):
        if path.is_file():
            return path
    return None


@contextlib.contextmanager
def _locked(out_dir: Path):
    if is_remote(out_dir):  # no lock on object stores: see the module docstring
        yield
        return
    try:
        (out_dir / META_DIR).mkdir(parents=True, exist_ok=True)
        lock = open(out_dir / META_DIR / LOCK_NAME, "w")
    except OSError as e:
        raise OutputError(
            f"{out_dir}: cannot create or write the output directory ({e.strerror or e})",
            remedy=f"choose a writable {arg('out_dir')} (a path whose parents are directories, on a "
            "writable file system)",
        ) from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_json(path: Path) -> dict:
    return _parse_json(path, path.read_bytes())


def _parse_json(path, raw: bytes) -> dict:
    """A manifest is JSON and only JSON (never unpickled, never evaluated): anything else
    is refused, naming the file."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        data, why = None, str(e)
    else:
        why = f"a JSON {type(data).__name__}, not an object"
    if not isinstance(data, dict):
        raise OutputError(
            f"{path}: corrupt manifest (not the JSON object tokedit writes: {why})",
            remedy="tokedit cannot tell which files of that directory are its own: move the "
            "directory aside (or delete it) and rerun the command that wrote it",
        )
    return data


def read_manifest(
    out_dir: str | os.PathLike, *, known: dict | None = None, strict: bool = True
) -> dict | None:
    """The manifest of ``out_dir`` (see :func:`find_manifest`), or ``None`` if it has none.

    On an object store: the header merged with the entry objects of ``.tokedit/shards/``
    (``known``: entries this process holds already, not downloaded again; ``strict=False``:
    entry objects of other options are taken too, for ``--overwrite`` to delete them)."""
    if is_remote(out_dir):
        with storage_errors(out_dir):
            return _read_remote_manifest(as_path(out_dir), known or {}, strict)
    path = find_manifest(out_dir)
    return None if path is None else _read_json(path)


def _read_remote_manifest(out_dir, known: dict, strict: bool = True) -> dict | None:
    data = None
    for path in (manifest_path(out_dir), legacy_manifest_path(out_dir)):
        raw = read_bytes_or_none(path)  # one GET, no HEAD and no listing before it
        if raw is not None:
            data = _parse_json(path, raw)
            break
    if data is None:
        return None
    if path == legacy_manifest_path(out_dir) and data.get("tool") != "tokedit":
        return None
    snapshot = dict(data.get("shards", {}))
    entries = {
        **snapshot,
        **_remote_entries(out_dir, known, _options_tag(data) if strict else None),
    }
    if set(entries) - set(snapshot):
        # Shards completed (by another process) after the header was written: its totals
        # do not count them. Readers recompute what they need from the entries.
        data.pop("totals", None)
    data["shards"] = dict(sorted(entries.items()))
    return data


def _options_tag(manifest: dict) -> str:
    """A short hash of a manifest's command and options, stored in every entry object."""
    blob = json.dumps([manifest.get("command"), manifest.get("options")], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _remote_entries(out_dir, known: dict, tag: str | None) -> dict[str, dict]:
    """The completion entries of ``OUT/.tokedit/shards/`` (object stores), by shard; those
    in ``known`` are taken from there (an entry object is written once per shard).

    Each entry object carries the tag of the options it was written with: an entry of other
    options than the header's (two runs with different options raced into one new prefix,
    and each read back its own header) is refused rather than mixed in."""
    entries = {}
    folder = out_dir / META_DIR / ENTRIES_DIR
    for name in find(folder):
        if "/" in name or not name.endswith(".json"):
            continue
        rel = unquote(name[: -len(".json")])
        if rel in known:
            entries[rel] = known[rel]
            continue
        obj = _read_json(folder / name)
        if tag is not None and obj.get("options_tag", tag) != tag:
            raise OutputError(
                f"{out_dir}: shard {obj['shard']} was written with other options than the "
                "manifest's (two runs with different options wrote into this prefix at once)",
                remedy=f"rerun with {arg('overwrite', True)} to replace the output, or choose "
                f"another {arg('out_dir')}",
            )
        entries[obj["shard"]] = obj["entry"]
    return entries


def _migrate_legacy(out_dir: Path) -> None:
    """Move an old-style ``out_dir/manifest.json`` written by tokedit to ``.tokedit/``
    (call under the lock). A crash between the write and the unlink leaves both files;
    the new one wins in :func:`find_manifest`. A root ``manifest.json`` that is not
    tokedit's is left alone."""
    legacy = legacy_manifest_path(out_dir)
    if manifest_path(out_dir).is_file() or not legacy.is_file():
        return
    data = _read_json(legacy)
    if not isinstance(data, dict) or data.get("tool") != "tokedit":
        return
    write_json(manifest_path(out_dir), data)
    legacy.unlink(missing_ok=True)
    (out_dir / _LEGACY_LOCK_NAME).unlink(missing_ok=True)


class Manifest:
    """Open (or create) the manifest of ``out_dir`` for ``command`` run with ``options``.

    ``options`` must hold everything that changes the output bytes; ``info`` holds facts
    recorded for readers (for example the tool version) that do not decide reuse.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        command: str,
        options: dict[str, Any],
        *,
        info: dict[str, Any] | None = None,
        overwrite: bool = False,
    ):
        self.out_dir = as_path(out_dir)
        self.path = manifest_path(self.out_dir)
        self.command = command
        self.options = json.loads(json.dumps(options))  # normalise tuples etc. as JSON would
        tag = _options_tag({"command": command, "options": self.options})
        self.run = this_run(command, tag)
        self._runs_dir = self.out_dir / META_DIR / RUNS_DIR
        with storage_errors(self.out_dir), _locked(self.out_dir):
            claim(self._runs_dir, self.run, where=self.out_dir, overwrite=overwrite)
            try:
                self._open(info, overwrite)
            except BaseException:
                remove_record(self._runs_dir, self.run)
                raise

    def _open(self, info: dict[str, Any] | None, overwrite: bool) -> None:
        if not is_remote(self.out_dir):  # see docs/storage.md
            _migrate_legacy(self.out_dir)
        existing = read_manifest(self.out_dir, strict=not overwrite)
        if existing is None:  # a directory tokedit has never written to
            _refuse_foreign_files(self.out_dir)
        if existing is not None and overwrite:
            self._remove_outputs(existing)
            existing = None
        if existing is not None and not existing.get("shards"):
            # Options bind only once a shard is complete: a run that failed before
            # writing any shard (a missing text column, a wrong --id-column) must not
            # block its corrected command. Its options are simply replaced. (A run of
            # other options that is still writing here was refused by claim().)
            existing = None
        if existing is not None:
            self._check_compatible(existing)
            self.data = existing
            return
        self.data = {
            "tool": "tokedit",
            "version": __version__,
            "command": self.command,
            "options": self.options,
            "info": info or {},
            "shards": {},
        }
        write_json(self.path, self.data)
        if is_remote(self.out_dir):
            # No lock: a concurrent process may have created the header at the same
            # time. The last upload wins; both read it back, and the loser of a race
            # between other options refuses here.
            theirs = read_manifest(self.out_dir)
            if theirs is not None:
                self._check_compatible(theirs)

    def close(self) -> None:
        """End this run: remove its record from ``OUT/.tokedit/runs/`` (see
        :mod:`tokedit.io.runs`). Called by ``with Manifest(...)`` however the block ends."""
        with storage_errors(self.out_dir):
            remove_record(self._runs_dir, self.run)

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_compatible(self, existing: dict) -> None:
        if existing.get("command") != self.command:
            raise OutputError(
                f"{self.out_dir} holds the output of `tokedit {existing.get('command')}`, not `{self.command}`",
                remedy=f"choose another {arg('out_dir')}",
            )
        old = existing.get("options", {})
        changed = sorted(
            k for k in set(old) | set(self.options) if old.get(k) != self.options.get(k)
        )
        if changed:
            diffs = "; ".join(
                f"{k}: {old.get(k)!r} -> {self.options.get(k)!r}" for k in changed[:6]
            )
            raise OutputError(
                f"{self.out_dir} was written with other options ({diffs})",
                remedy=f"rerun with the same options to resume, pass {arg('overwrite', True)} to "
                f"replace it, or choose another {arg('out_dir')}",
            )

    def _remove_outputs(self, existing: dict) -> None:
        """Delete what the earlier run wrote: its outputs, then the directories (``p=…/``,
        sub-directories of shards) that they leave empty, then its manifest."""
        if is_remote(self.out_dir):
            for entry in existing.get("shards", {}).values():
                for rel in entry.get("outputs", []):
                    inside(self.out_dir, rel, named_by=str(self.path)).unlink(missing_ok=True)
            for rel in find(self.out_dir / META_DIR / ENTRIES_DIR):
                (self.out_dir / META_DIR / ENTRIES_DIR / rel).unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)
            legacy_manifest_path(self.out_dir).unlink(missing_ok=True)
            return
        out = self.out_dir.resolve()
        # every path first: a manifest naming one outside --out deletes nothing
        paths = [
            inside(self.out_dir, rel, named_by=str(self.path))
            for entry in existing.get("shards", {}).values()
            for rel in entry.get("outputs", [])
        ]
        for path in paths:
            path.unlink(missing_ok=True)
            for parent in path.resolve().parents:
                if parent == out or out not in parent.parents:
                    break
                try:
                    parent.rmdir()  # only when empty
                except OSError:
                    break
        self.path.unlink(missing_ok=True)
        legacy_manifest_path(self.out_dir).unlink(missing_ok=True)

    def is_complete(self, shard_rel: str) -> bool:
        """True when the shard has an entry and all its output files exist."""
        entry = self.data["shards"].get(shard_rel)
        with storage_errors(self.out_dir):
            return entry is not None and all(
                inside(self.out_dir, rel, named_by=str(self.path)).is_file()
                for rel in entry.get("outputs", [])
            )

    def mark_complete(self, shard_rel: str, entry: dict[str, Any]) -> None:
        """Record a finished shard (after its files were renamed into place)."""
        if is_remote(self.out_dir):
            entry = json.loads(json.dumps(entry))
            obj = {"shard": shard_rel, "entry": entry, "options_tag": _options_tag(self.data)}
            blob = json.dumps(obj, indent=2, sort_keys=True)
            with storage_errors(self.out_dir):
                entry_path(self.out_dir, shard_rel).write_text(blob + "\n")  # one PUT
            self.data["shards"][shard_rel] = entry
            self.data["shards"] = dict(sorted(self.data["shards"].items()))
            return
        with _locked(self.out_dir):
            current = read_manifest(self.out_dir) or self.data
            current["shards"][shard_rel] = json.loads(json.dumps(entry))
            current["shards"] = dict(sorted(current["shards"].items()))
            write_json(self.path, current)
            self.data = current

    def refresh(self) -> None:
        """Object stores: take in the entries other processes have written since (one
        listing), so that totals computed from :attr:`shards` count them. Local
        directories are re-read under the lock at every :meth:`mark_complete` already."""
        if is_remote(self.out_dir):
            self.data = read_manifest(self.out_dir, known=self.data["shards"]) or self.data

    def update(self, **fields: Any) -> None:
        """Set top-level fields (for example totals) under the lock."""
        with _locked(self.out_dir):
            current = read_manifest(self.out_dir, known=self.data["shards"]) or self.data
            current.update(json.loads(json.dumps(fields)))
            write_json(self.path, current)
            self.data = current

    @property
    def shards(self) -> dict[str, dict]:
        return self.data["shards"]


def _refuse_foreign_files(out_dir: Path) -> None:
    """A new output must not mix with files tokedit did not write: refuse a directory that
    holds visible entries but no manifest (hidden ones, such as ``.tokedit/``, are ignored)."""
    if is_remote(out_dir):
        names = children(out_dir)
    elif out_dir.is_dir():
        names = [p.name for p in out_dir.iterdir()]
    else:
        return
    foreign = sorted(n for n in names if not n.startswith("."))
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise OutputError(
            f"{out_dir} is not empty ({shown}) and holds no tokedit manifest: its files were not "
            "written by tokedit, and the output would mix with them",
            remedy=f"choose a new or empty directory as {arg('out_dir')}",
        )
