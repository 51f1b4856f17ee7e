"""Where files live: local paths, or any fsspec URL (``s3://``, ``gs://``, ``hf://``, ...).

This module is the one place that knows about remote storage. Everything else works on
"path-likes": a local :class:`pathlib.Path` (the fast path, unchanged: ``open``, memory
maps, ``os.replace``, ``fcntl``) or a :class:`RemotePath`, which offers the small part of
the ``Path`` API tokedit uses (``/``, ``name``, ``parent``, ``is_file``, ``read_text``,
``iterdir``, ``rglob``, ``unlink``...) on top of an fsspec filesystem.

* :func:`as_path` turns a command-line argument into one or the other. ``file://`` URLs and
  plain paths are local.
* Storage options (credentials, endpoints, timeouts) come from ``--storage-options JSON``
  (:func:`set_storage_options`) or the filesystem's usual environment variables
  (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``,
  ``HF_TOKEN``...). They travel to worker processes (``--num-shards`` tasks started by the
  user get them from their own command line; Ray actors through the environment variable
  ``TOKEDIT_STORAGE_OPTIONS``) and are never written into a manifest.
* Reads stream: :func:`open_read` returns a buffered, range-reading fsspec file.
* Writes are published (:func:`publish`): the bytes go to a hidden temporary key
  ``.NAME.PID-HOST.tmp`` beside the destination in one upload, are copied to the
  destination by the store (a server-side copy, all or nothing), and the temporary key is
  deleted. Object stores have no rename; a reader never sees a partial object, and a shard
  is complete only once its manifest entry exists (see :mod:`tokedit.io.manifest`).
* Errors of the store (no bucket, no credentials, access denied, an endpoint that does not
  answer) become an :class:`~tokedit.errors.InputError` that names the URL (exit 2).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tokedit.errors import InputError, arg

ENV_OPTIONS = "TOKEDIT_STORAGE_OPTIONS"
# Examples of storage options in messages (JSON, as --storage-options takes them).
KEY_SECRET = '{"key": "...", "secret": "..."}'
ANON = '{"anon": true}'
TIMEOUTS = '{"config_kwargs": {"connect_timeout": S, "read_timeout": S}}'
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")

# A bounded wait for an endpoint that does not answer: botocore's defaults are 60 s per
# connection attempt and per read, retried; these apply unless --storage-options sets them.
S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {
        "connect_timeout": 10,
        "read_timeout": 60,
        "retries": {"max_attempts": 2, "mode": "standard"},
    }
}
# s3fs retries some errors itself (connection errors among them), with back-off; the
# "retries" key of the s3 storage options sets how many times.
S3_RETRIES = 3


def scheme_of(p: Any) -> str | None:
    """The URL scheme of ``p`` (``s3``, ``gs``, ``hf``...), or ``None`` for a local path."""
    if isinstance(p, RemotePath):
        return p.protocol
    if isinstance(p, (str, os.PathLike)):
        m = _SCHEME.match(os.fspath(p)) if isinstance(p, str) else None
        return m.group(1).lower() if m else None
    return None


def is_remote(p: Any) -> bool:
    """True for a :class:`RemotePath` or a URL of any scheme but ``file``."""
    return isinstance(p, RemotePath) or scheme_of(p) not in (None, "file", "local")


def as_path(p: Any) -> Path | RemotePath:
    """A local :class:`Path` for plain paths and ``file://`` URLs, else a :class:`RemotePath`."""
    if isinstance(p, RemotePath):
        return p
    if isinstance(p, Path):
        return p
    s = os.fspath(p)
    scheme = scheme_of(s)
    if scheme is None:
        return Path(s)
    if scheme in ("file", "local"):
        return Path(s.split("://", 1)[1] or "/")
    return RemotePath(s)


def require_local(path: Any, name: str) -> None:
    """Refuse a URL where tokedit writes local files only (model and experiment folders);
    ``name`` is the parameter that gave ``path`` (for the message)."""
    if is_remote(path):
        raise InputError(
            f"{arg(name, str(path))}: this output must be a local directory (object storage is "
            "for dataset, scores, edited and report directories)",
            remedy=f"pass a local {arg(name)} and copy it to the store afterwards",
        )


# ----------------------------------------------------------------------------- options


def set_storage_options(options: dict | str | None) -> None:
    """Use ``options`` (a dict or a JSON object) for every filesystem this process and its
    children (Ray actors, subprocesses) open. ``None`` leaves the current ones."""
    if options is None:
        return
    if isinstance(options, str):
        options = parse_storage_options(options)
    os.environ[ENV_OPTIONS] = json.dumps(options)
    _FILESYSTEMS.clear()


def parse_storage_options(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{arg('storage_options')} is not valid JSON ({e.msg} at column {e.colno})",
            remedy='pass a JSON object, e.g. \'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\'',
        ) from None
    if not isinstance(value, dict):
        raise InputError(
            f"{arg('storage_options')} must be a JSON object",
            remedy='e.g. \'{"anon": true}\' or \'{"s3": {"profile": "x"}, "gs": {"token": "..."}}\'',
        )
    return value


def storage_options(protocol: str) -> dict:
    """The options for ``protocol``: the JSON of ``TOKEDIT_STORAGE_OPTIONS``, either one
    object for every protocol or ``{"s3": {...}, "gs": {...}}``, over tokedit's defaults."""
    raw = os.environ.get(ENV_OPTIONS)
    given = parse_storage_options(raw) if raw else {}
    if protocol in given and isinstance(given[protocol], dict):
        given = given[protocol]
    elif any(isinstance(v, dict) and k in _KNOWN_PROTOCOLS for k, v in given.items()):
        given = {}  # per-protocol options, none of them for this one
    if protocol in ("s3", "s3a"):
        merged = json.loads(json.dumps(S3_DEFAULTS))
        for k, v in given.items():
            if isinstance(v, dict) and isinstance(merged.get(k), dict):
                merged[k] = {**merged[k], **v}
            else:
                merged[k] = v
        return merged
    return dict(given)


_KNOWN_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "hf", "az", "abfs", "memory", "http", "https"}
_FILESYSTEMS: dict[tuple[str, str], Any] = {}


def filesystem(protocol: str):
    """The fsspec filesystem of ``protocol`` with the current storage options (cached)."""
    raw = os.environ.get(ENV_OPTIONS, "")
    key = (protocol, raw)
    fs = _FILESYSTEMS.get(key)
    if fs is None:
        try:
            import fsspec

            options = storage_options(protocol)
            # s3fs retries some errors itself (not a constructor argument): "retries" sets it.
            retries = options.pop("retries", S3_RETRIES) if protocol in ("s3", "s3a") else None
            fs = fsspec.filesystem(protocol, **options)
        except ImportError as e:
            raise InputError(
                f"{protocol}:// URLs need a filesystem package that cannot be imported ({e})",
                remedy="pip install 'tokedit[s3]' (s3fs) for s3://, gcsfs for gs://, huggingface_hub for hf://",
            ) from e
        except TypeError as e:  # an option this filesystem does not take
            raise InputError(
                f"{protocol}:// filesystem refuses the storage options ({e})",
                remedy=f"check {arg('storage_options')} / ${ENV_OPTIONS}; give options per "
                'protocol when URLs of several kinds are used: \'{"s3": {...}, "hf": {...}}\'',
            ) from e
        except ValueError as e:  # unknown protocol
            raise InputError(
                f"{protocol}:// is not a filesystem fsspec knows ({e})",
                remedy="use a local path or a URL such as s3://bucket/prefix, gs://..., hf://datasets/org/name",
            ) from e
        if retries is not None:
            fs.retries = int(retries)
        _FILESYSTEMS[key] = fs
    return fs


# ----------------------------------------------------------------------------- errors


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def describe_error(e: BaseException, url: str) -> InputError | None:
    """An :class:`InputError` naming ``url`` for an error of the store, or ``None`` for one
    tokedit handles itself (a missing object, for example)."""
    names = {cls.__name__ for err in _chain(e) for cls in type(err).__mro__}
    text = " ".join(str(err) for err in _chain(e))
    bucket = _bucket(url)
    if isinstance(e, TypeError) and "unexpected keyword argument" in text:
        return InputError(
            f"{url}: the {url.split('://', 1)[0]}:// filesystem refuses the storage options ({e})",
            remedy=f"check {arg('storage_options')} / ${ENV_OPTIONS}; give options per "
            'protocol when URLs of several kinds are used: \'{"s3": {...}, "hf": {...}}\'',
        )
    if "NoCredentialsError" in names or "Unable to locate credentials" in text:
        return InputError(
            f"{url}: no credentials found for this storage",
            remedy="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass "
            f"{arg('storage_options', KEY_SECRET)} (or {arg('storage_options', ANON)} for a "
            "public bucket)",
        )
    if (
        "NoSuchBucket" in text
        or "bucket does not exist" in text
        or "specified bucket does not exist" in text
    ):
        return InputError(
            f"{url}: the bucket {bucket!r} does not exist",
            remedy=f"check the bucket name in the URL (and the endpoint_url of {arg('storage_options')}), "
            "or create the bucket",
        )
    if (
        names & {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError"}
        or names & {"ConnectionError", "TimeoutError", "ClientConnectorError", "ServerTimeoutError"}
        or "Connect timeout" in text
    ):
        return InputError(
            f"{url}: the storage endpoint does not answer ({_first_line(e)})",
            remedy="check the endpoint_url and the network; "
            f"{arg('storage_options', TIMEOUTS)} bounds the wait",
        )
    if (
        "PermissionError" in names
        or "AccessDenied" in text
        or "InvalidAccessKeyId" in text
        or "SignatureDoesNotMatch" in text
        or "Forbidden" in text
    ):
        return InputError(
            f"{url}: access denied ({_first_line(e)})",
            remedy="check that the credentials are valid and may list, read and write this bucket and prefix",
        )
    return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _bucket(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0]


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn errors of the store into an :class:`InputError` naming ``url``; let the rest
    (a missing object, an error tokedit reports itself) through unchanged."""
    try:
        yield
    except InputError:
        raise
    except Exception as e:
        described = describe_error(e, url)
        if described is None:
            raise
        raise described from e


# ----------------------------------------------------------------------------- RemotePath


class RemotePath:
    """A file or "directory" (key prefix) on an fsspec filesystem, with the few ``Path``
    methods tokedit calls. Immutable; compares and hashes by URL."""

    __slots__ = ("url",)

    def __init__(self, url: str):
        scheme = scheme_of(url)
        if scheme is None:
            raise ValueError(f"not a URL: {url!r}")
        rest = url.split("://", 1)[1]
        netloc = rest.split("/", 1)[0]
        if "@" in netloc and ":" in netloc.split("@", 1)[0]:
            raise InputError(
                f"{scheme}://…@{netloc.split('@', 1)[1]}: the URL holds a password",
                remedy=f"pass credentials with {arg('storage_options')} or the environment, never in "
                "the URL "
                "(URLs are recorded in manifests)",
            )
        parts = [p for p in rest.split("/") if p not in ("", ".")]
        out: list[str] = []
        for p in parts:
            if p == ".." and len(out) > 1:
                out.pop()
            elif p != "..":
                out.append(p)
        object.__setattr__(self, "url", f"{scheme}://" + "/".join(out))

    def __setattr__(self, name, value):  # pragma: no cover - immutability guard
        raise AttributeError("RemotePath is immutable")

    def __reduce__(self):
        return (RemotePath, (self.url,))

    # -- pure path operations
    @property
    def protocol(self) -> str:
        return self.url.split("://", 1)[0].lower()

    @property
    def fs(self):
        return filesystem(self.protocol)

    @property
    def key(self) -> str:
        """The path the filesystem takes (``bucket/prefix/name`` for s3)."""
        return self.fs._strip_protocol(self.url)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other) -> bool:
        return str(self) < str(other)

    def __truediv__(self, other) -> RemotePath:
        rel = os.fspath(other) if not isinstance(other, str) else other
        rel = rel.replace(os.sep, "/").strip("/")
        return self if rel in ("", ".") else RemotePath(self.url + "/" + rel)

    @property
    def _rest(self) -> str:
        return self.url.split("://", 1)[1]

    @property
    def name(self) -> str:
        return self._rest.rsplit("/", 1)[-1] if "/" in self._rest else ""

    @property
    def parent(self) -> RemotePath:
        if "/" not in self._rest:
            return self
        return RemotePath(f"{self.protocol}://{self._rest.rsplit('/', 1)[0]}")

    @property
    def parents(self) -> list[RemotePath]:
        out, p = [], self
        while p.parent != p:
            p = p.parent
            out.append(p)
        return out

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def resolve(self, strict: bool = False) -> RemotePath:
        return self

    absolute = resolve

    def as_posix(self) -> str:
        return self.url

    def relative_to(self, other) -> Path:
        base = str(other).rstrip("/") + "/"
        if not self.url.startswith(base):
            raise ValueError(f"{self.url} is not under {other}")
        return Path(self.url[len(base) :])

    # -- filesystem operations (errors of the store name the URL)
    def _info(self) -> dict | None:
        with storage_errors(self.url):
            try:
                return self.fs.info(self.key)
            except FileNotFoundError as e:
                if describe_error(e, self.url) is not None:
                    raise
                return None

    def exists(self) -> bool:
        return self._info() is not None

    def is_file(self) -> bool:
        info = self._info()
        return info is not None and info.get("type") == "file"

    def is_dir(self) -> bool:
        info = self._info()
        return info is not None and info.get("type") == "directory"

    def is_symlink(self) -> bool:
        return False

    def stat(self):
        info = self._info()
        if info is None:
            raise FileNotFoundError(self.url)
        return SimpleNamespace(st_size=int(info.get("size") or 0))

    def open(self, mode: str = "rb", **kwargs):
        with storage_errors(self.url):
            return self.fs.open(self.key, mode, **kwargs)

    @property
    def _cat_kwargs(self) -> dict:
        # s3fs asks for the size (a HEAD, and a listing when missing) before a GET unless
        # told to read in one request: small objects (manifests) are read in one GET.
        return {"max_concurrency": 1} if self.protocol in ("s3", "s3a") else {}

    def read_bytes(self) -> bytes:
        with storage_errors(self.url):
            return self.fs.cat_file(self.key, **self._cat_kwargs)

    def read_bytes_or_none(self) -> bytes | None:
        """The object's bytes, or ``None`` if there is no such object (one GET)."""
        with storage_errors(self.url):
            try:
                return self.fs.cat_file(self.key, **self._cat_kwargs)
            except FileNotFoundError as e:
                if describe_error(e, self.url) is not None:
                    raise
                return None

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        """One upload (a single PUT: all or nothing on an object store)."""
        with storage_errors(self.url):
            self.fs.pipe_file(self.key, data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        with storage_errors(self.url):
            try:
                self.fs.rm_file(self.key)
            except FileNotFoundError:
                if not missing_ok:
                    raise

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object stores have no directories: a prefix exists once a key is under it."""

    def rmdir(self) -> None:
        """Nothing to remove (see :meth:`mkdir`)."""

    def iterdir(self) -> Iterator[RemotePath]:
        with storage_errors(self.url):
            self.fs.invalidate_cache(self.key)
            try:
                names = self.fs.ls(self.key, detail=False)
            except FileNotFoundError as e:
                if describe_error(e, self.url) is not None:
                    raise
                return
        base = self.key.rstrip("/")
        for name in sorted(names):
            name = name.rstrip("/")
            if name != base:
                yield self / name.rsplit("/", 1)[-1]

    def find(self) -> list[str]:
        """Every object under this prefix, as POSIX paths relative to it, sorted. A fresh
        listing (another process may have written since the last one)."""
        with storage_errors(self.url):
            self.fs.invalidate_cache(self.key)
            try:
                keys = self.fs.find(self.key)
            except FileNotFoundError as e:
                if describe_error(e, self.url) is not None:
                    raise
                return []
        base = self.key.rstrip("/") + "/"
        return sorted(k[len(base) :] for k in keys if k.startswith(base))

    def rglob(self, pattern: str) -> Iterator[RemotePath]:
        for rel in self.find():
            if fnmatch.fnmatch(rel.rsplit("/", 1)[-1], pattern):
                yield self / rel


# ----------------------------------------------------------------------------- reads


def open_read(path):
    """A binary stream of ``path``: a local file, or a buffered range-reading remote file
    (nothing is downloaded before the first bytes are used)."""
    if isinstance(path, RemotePath):
        return path.open("rb", cache_type="readahead", block_size=8 << 20)
    return open(path, "rb")


def arrow_source(path):
    """What pyarrow readers take for ``path``: the local path itself (pyarrow's own fast
    reads), or a seekable remote file read in ranges."""
    if isinstance(path, RemotePath):
        return path.open("rb", cache_type="readahead", block_size=8 << 20)
    return path


@contextlib.contextmanager
def open_arrow_stream_input(path):
    """An Arrow input stream: a memory map locally, a streamed remote file otherwise."""
    import pyarrow as pa

    if isinstance(path, RemotePath):
        with path.open("rb", cache_type="readahead", block_size=8 << 20) as f:
            yield pa.PythonFile(f, mode="r")
    else:
        with pa.memory_map(str(path)) as source:
            yield source


# ----------------------------------------------------------------------------- writes

_PUBLISHED_SHA256: dict[str, str] = {}


def spool_dir() -> Path:
    """Local directory where remote outputs are written before their upload."""
    import tempfile

    d = Path(os.environ.get("TOKEDIT_SPOOL") or tempfile.gettempdir()) / "tokedit-spool"
    d.mkdir(parents=True, exist_ok=True)
    return d


def publish(local: Path, dest: RemotePath, temp_name: str) -> None:
    """Upload ``local`` to the hidden key ``temp_name`` beside ``dest``, copy it to ``dest``
    on the store (all or nothing), then delete the temporary key.

    A crash before the copy leaves only the temporary key, which the next run removes
    (:func:`tokedit.io.write.remove_stale_temp_files`); a crash after it leaves a complete
    object, which counts only once its manifest entry exists.
    """
    tmp = dest.with_name(temp_name)
    h = hashlib.sha256()
    with open(local, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    with storage_errors(str(dest)):
        fs = dest.fs
        fs.put_file(str(local), tmp.key)
        fs.cp_file(tmp.key, dest.key)  # a server-side copy (s3: CopyObject)
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(tmp.key)
    _PUBLISHED_SHA256[dest.url] = h.hexdigest()


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes; for an object this process has just published, the hash
    of the bytes it uploaded (no second download)."""
    if isinstance(path, RemotePath) or is_remote(path):
        p = as_path(path)
        known = _PUBLISHED_SHA256.get(p.url)
        if known is not None:
            return known
        stream = p.open("rb", block_size=8 << 20)
    else:
        stream = open(path, "rb")
    h = hashlib.sha256()
    with stream as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
