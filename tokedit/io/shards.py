"""Finding the shards of a dataset directory.

A *dataset directory* holds shards of one of these formats, possibly in sub-directories:
``*.parquet``, ``*.jsonl``, ``*.jsonl.gz``, ``*.jsonl.zst`` and ``datasets`` ``save_to_disk``
folders (recognised by their ``state.json``; each of their ``*.arrow`` files is a shard).
Shard order is the sorted relative path, so every process sees the same list.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tokedit.errors import InputError, arg, first_few
from tokedit.io.manifest import MANIFEST_NAME
from tokedit.io.storage import as_path, find, is_remote, storage_errors

# Longest suffix first: ".jsonl.gz" must win over ".gz".
FORMATS = {
    ".jsonl.zst": "jsonl.zst",
    ".jsonl.gz": "jsonl.gz",
    ".jsonl": "jsonl",
    ".parquet": "parquet",
    ".arrow": "arrow",
}
# Files tokedit itself (an old-style root manifest) or common tooling leaves beside shards;
# never data. Today's manifest is under the hidden OUT/.tokedit/, skipped like any hidden name.
IGNORED_NAMES = {MANIFEST_NAME, "README.md", "README", ".gitattributes", "LICENSE"}


@dataclass(frozen=True)
class Shard:
    """One input file. ``rel`` is its POSIX path relative to the dataset root (a local
    :class:`Path`, or a ``UPath`` carrying its storage options)."""

    root: Path  # or a UPath
    rel: str
    fmt: str

    @property
    def path(self) -> Path:
        return self.root / self.rel

    @property
    def stem_rel(self) -> str:
        """``rel`` without the format suffix (``a/b.jsonl.gz`` -> ``a/b``)."""
        for suffix, fmt in FORMATS.items():
            if fmt == self.fmt and self.rel.endswith(suffix):
                return self.rel[: -len(suffix)]
        return self.rel

    def with_suffix(self, suffix: str) -> str:
        """Relative output path mirroring this shard, e.g. ``a/b.parquet``."""
        return self.stem_rel + suffix


def shard_format(name: str) -> str | None:
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return None


def _is_hf_disk_folder(path: Path) -> bool:
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def _hf_disk_shards(root: Path, folder: Path) -> list[Shard]:
    state = json.loads((folder / "state.json").read_text())
    files = [f["filename"] for f in state.get("_data_files", [])]
    rel_folder = folder.relative_to(root).as_posix()
    prefix = "" if rel_folder == "." else rel_folder + "/"
    return [Shard(root, prefix + name, "arrow") for name in files]


def discover_shards(
    root: str | os.PathLike, *, num_shards: int = 1, shard_index: int = 0
) -> list[Shard]:
    """All shards under ``root`` in sorted order, then the ``shard_index``-th of ``num_shards`` slices.

    Raises :class:`InputError` for a missing directory, an empty one, or a file of unknown type
    (naming it), so that nothing in the directory is silently left out.
    """
    root = as_path(root)
    if is_remote(root):
        with storage_errors(root):
            return _select(_discover_remote(root), num_shards, shard_index)
    if root.is_file() and shard_format(root.name):
        return _select(
            [Shard(root.parent, root.name, shard_format(root.name))], num_shards, shard_index
        )
    if not root.is_dir():
        raise InputError(
            f"{root}: no such dataset directory",
            remedy="pass a directory of .parquet/.jsonl[.gz|.zst] shards or a datasets save_to_disk folder",
        )
    if _is_hf_disk_folder(root):
        return _select(_hf_disk_shards(root, root), num_shards, shard_index)

    shards: list[Shard] = []
    unknown: list[str] = []
    seen_dirs: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        st = here.stat()
        if (st.st_dev, st.st_ino) in seen_dirs:  # symlink loop: walk each real directory once
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
        for d in list(dirnames):
            if _is_hf_disk_folder(here / d):
                shards.extend(_hf_disk_shards(root, here / d))
                dirnames.remove(d)
        for name in sorted(filenames):
            if name.startswith(".") or name in IGNORED_NAMES or name.endswith(".tmp"):
                continue
            rel = (here / name).relative_to(root).as_posix()
            fmt = shard_format(name)
            if fmt is None or fmt == "arrow":
                unknown.append(rel)
            else:
                shards.append(Shard(root, rel, fmt))
    return _select(_checked(root, shards, unknown), num_shards, shard_index)


def _checked(root, shards: list[Shard], unknown: list[str]) -> list[Shard]:
    if unknown:
        raise InputError(
            f"{root}: {len(unknown)} file(s) of unknown type: {first_few(unknown)}",
            remedy="tokedit reads .parquet, .jsonl, .jsonl.gz, .jsonl.zst and datasets save_to_disk folders; move other files out of the dataset directory",
        )
    if not shards:
        raise InputError(
            f"{root}: no shards found",
            remedy="the directory must hold .parquet/.jsonl[.gz|.zst] files or a datasets save_to_disk folder",
        )
    shards.sort(key=lambda s: s.rel)
    return shards


def _discover_remote(root) -> list[Shard]:
    """:func:`discover_shards` on an object store: one listing of the prefix, the same rules
    as on disk (hidden and ``_`` directories skipped, ``save_to_disk`` folders recognised)."""
    keys = find(root)
    if not keys:
        if root.is_file() and shard_format(root.name):
            return [Shard(root.parent, root.name, shard_format(root.name))]
        raise InputError(
            f"{root}: no such dataset directory (nothing under this prefix)",
            remedy="check the URL; pass a prefix of .parquet/.jsonl[.gz|.zst] shards or a datasets save_to_disk folder",
        )
    present = set(keys)
    hf_folders = sorted(
        {
            k.rsplit("/", 1)[0] if "/" in k else ""
            for k in keys
            if k.rsplit("/", 1)[-1] == "state.json"
            and (k[: -len("state.json")] + "dataset_info.json") in present
        }
    )
    shards: list[Shard] = []
    unknown: list[str] = []
    for key in keys:
        parts = key.split("/")
        if any(d.startswith((".", "_")) for d in parts[:-1]):
            continue
        folder = "/".join(parts[:-1])
        hf = next(
            (f for f in hf_folders if f == folder or f == "" or folder.startswith(f + "/")), None
        )
        if hf is not None:
            continue
        name = parts[-1]
        if name.startswith(".") or name in IGNORED_NAMES or name.endswith(".tmp"):
            continue
        fmt = shard_format(name)
        if fmt is None or fmt == "arrow":
            unknown.append(key)
        else:
            shards.append(Shard(root, key, fmt))
    for folder in hf_folders:
        if any(d.startswith((".", "_")) for d in folder.split("/") if folder):
            continue
        state = json.loads((root / folder / "state.json").read_text())
        prefix = folder + "/" if folder else ""
        shards.extend(
            Shard(root, prefix + f["filename"], "arrow") for f in state.get("_data_files", [])
        )
    return _checked(root, shards, unknown)


def _select(shards: list[Shard], num_shards: int, shard_index: int) -> list[Shard]:
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise InputError(
            f"{arg('shard_index', shard_index)} is not in [0, {arg('num_shards', num_shards)})",
            remedy=f"use 0 <= {arg('shard_index')} < {arg('num_shards')}",
        )
    return [s for i, s in enumerate(shards) if i % num_shards == shard_index]
