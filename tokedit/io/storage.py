"""Where files live: local paths, or any fsspec URL (``s3://``, ``gs://``, ``hf://``,
``memory://``...).

Everything else works on "path-likes": a local :class:`pathlib.Path` (the fast path,
unchanged: ``open``, memory maps, ``os.replace``, ``fcntl``) or a
:class:`upath.UPath` (universal_pathlib) for a URL, which offers the ``Path`` API on top of an
fsspec filesystem. This module holds only what fsspec and UPath lack:

* :func:`as_path` turns an argument into one or the other (``file://`` URLs and plain paths
  are local), and attaches storage options to a URL.
* Storage options (credentials, endpoints, timeouts) travel WITH the path: a UPath carries
  them (``p.storage_options``), every path derived from it (``p / "x"``, ``p.parent``) has
  them, and they are pickled with it (Ray actors get them with the shards they are sent).
  The command line's ``--storage-options JSON`` attaches them to the command's directory
  arguments; without them the filesystem's own environment variables apply
  (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``,
  ``HF_TOKEN``...). ``str(path)`` never shows them, so they are never written into a manifest.
* Listings (:func:`find`, :func:`children`) are fresh: another process may have written since.
* Reads stream: :func:`open_read` returns a buffered, range-reading fsspec file.
* Writes are published (:func:`publish`): the bytes go to a hidden temporary key
  ``.NAME.PID-HOST.tmp`` beside the destination in one upload, are copied to the
  destination by the store (a server-side copy, all or nothing), and the temporary key is
  deleted. Object stores have no rename; a reader never sees a partial object, and a shard
  is complete only once its manifest entry exists (see :mod:`tokedit.io.manifest`).
* Errors of the store (no bucket, no credentials, access denied, an endpoint that does not
  answer, a store that keeps throttling, failing or closing connections through the
  retries) become an :class:`~tokedit.errors.InputError` that names the URL (exit 2):
  :func:`storage_errors` around tokedit's own calls (the ranges a streamed read fetches
  included), :func:`command_storage_errors` around a whole command.

The design: docs/architecture.md, "Where object stores differ".
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tokedit.errors import InputError, arg

# Examples of storage options in messages (JSON, as --storage-options takes them).
KEY_SECRET = '{"key": "...", "secret": "..."}'
ANON = '{"anon": true}'
TIMEOUTS = '{"config_kwargs": {"connect_timeout": S, "read_timeout": S}}'
RETRIES = '{"retries": 6, "config_kwargs": {"retries": {"max_attempts": 4}}}'
PER_PROTOCOL = '\'{"s3": {...}, "hf": {...}}\''
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_LOCAL_SCHEMES = (None, "file", "local")
_S3 = ("s3", "s3a")

# A bounded wait for an endpoint that does not answer: botocore's defaults are 60 s per
# connection attempt and per read, retried; these apply unless the storage options set them.
# botocore retries each request ("max_attempts" counts the retries: 3 tries) after a
# throttling answer (503 SlowDown...), a server error (500, 502, 503, 504) or a dropped
# connection, waiting a random time up to 1 s, then 2 s (exponential back-off with jitter).
S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {
        "connect_timeout": 10,
        "read_timeout": 60,
        "retries": {"max_attempts": 2, "mode": "standard"},
    }
}
# s3fs tries each call this many times when botocore's tries end in a throttling answer or
# a dropped or cut connection (a streamed read cut mid-body included), waiting 0.1 s, then
# 0.17 s, 0.29 s... between them; not after a server error (500: botocore's 3 tries). The
# "retries" key of the s3 storage options sets it (s3fs has no such argument: tokedit sets
# it on the filesystem, see _filesystem_ready).
S3_RETRIES = 3
# Protocols whose name may key per-protocol options ({"s3": {...}, "gs": {...}}).
_KNOWN_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "hf", "az", "abfs", "memory", "http", "https"}
# Packages whose exceptions are the store's (see command_storage_errors).
_STORE_MODULES = {"fsspec", "s3fs", "botocore", "aiobotocore", "aiohttp", "gcsfs", "upath"}
_STORE_MODULES |= {"huggingface_hub", "adlfs", "google"}


def scheme_of(p: Any) -> str | None:
    """The URL scheme of ``p`` (``s3``, ``gs``, ``hf``...), or ``None`` for a local path."""
    if _is_upath(p):
        return p.protocol or None
    if isinstance(p, str):
        m = _SCHEME.match(p)
        return m.group(1).lower() if m else None
    return None


def is_remote(p: Any) -> bool:
    """True for a URL (a string or a UPath) of any scheme but ``file``."""
    return scheme_of(p) not in _LOCAL_SCHEMES


def _is_upath(p: Any) -> bool:
    from upath import UPath

    return isinstance(p, UPath)


def as_path(p: Any, storage_options: dict | None = None, *, like: Any = None):
    """A local :class:`Path` for plain paths and ``file://`` URLs, else a ``UPath``.

    A UPath is returned as it is. A URL string gets ``storage_options`` (one object for
    every protocol, or ``{"s3": {...}, "gs": {...}}``), or, with ``like`` (a path on the same
    filesystem, e.g. the directory whose manifest named the URL), the options of ``like``;
    ``s3://`` URLs get tokedit's timeouts and retries (:data:`S3_DEFAULTS`) under them."""
    if _is_upath(p):
        if scheme_of(p) in _LOCAL_SCHEMES:
            return Path(p.path)
        return _filesystem_ready(p)
    if isinstance(p, Path):
        return p
    s = os.fspath(p)
    scheme = scheme_of(s)
    if scheme is None:
        return Path(s)
    if scheme in ("file", "local"):
        return Path(s.split("://", 1)[1] or "/")
    if like is not None and scheme_of(like) == scheme and _is_upath(like):
        options = dict(like.storage_options)
    else:
        options = options_for(scheme, storage_options or {})
    from upath import UPath

    with _filesystem_errors(scheme):
        return _filesystem_ready(UPath(_normalized(s, scheme), **options))


def _normalized(url: str, scheme: str) -> str:
    """``url`` without empty, ``.`` and ``..`` parts; refused if it holds a password."""
    rest = url.split("://", 1)[1]
    netloc = rest.split("/", 1)[0]
    if "@" in netloc and ":" in netloc.split("@", 1)[0]:
        raise InputError(
            f"{scheme}://…@{netloc.split('@', 1)[1]}: the URL holds a password",
            remedy=f"pass credentials with {arg('storage_options')} or the environment, never in "
            "the URL (URLs are recorded in manifests)",
        )
    out: list[str] = []
    for part in rest.split("/"):
        if part == ".." and len(out) > 1:
            out.pop()
        elif part not in ("", ".", ".."):
            out.append(part)
    return f"{scheme}://" + "/".join(out)


def portable(path: Any):
    """The form of ``path`` a per-shard step carries to its workers (processes, Ray actors):
    the string of a local path, the UPath itself (with its storage options) for a URL."""
    return path if is_remote(path) else str(path)


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


def parse_storage_options(text: str) -> dict:
    """The storage options of ``--storage-options JSON``: a JSON object."""
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


def options_for(protocol: str, given: dict) -> dict:
    """The options for ``protocol`` out of ``given`` (either one object for every protocol
    or ``{"s3": {...}, "gs": {...}}``), over tokedit's defaults for ``s3``."""
    if protocol in given and isinstance(given[protocol], dict):
        given = given[protocol]
    elif any(isinstance(v, dict) and k in _KNOWN_PROTOCOLS for k, v in given.items()):
        given = {}  # per-protocol options, none of them for this one
    if protocol not in _S3:
        return copy.deepcopy(given)
    merged = {**copy.deepcopy(S3_DEFAULTS), "retries": S3_RETRIES}
    for k, v in given.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = {**merged[k], **v}
        else:
            merged[k] = copy.deepcopy(v)
    return merged


@contextlib.contextmanager
def _filesystem_errors(protocol: str) -> Iterator[None]:
    """A filesystem that cannot be made: a missing package, an unknown protocol."""
    try:
        yield
    except ImportError as e:
        raise InputError(
            f"{protocol}:// URLs need a filesystem package that cannot be imported ({e})",
            remedy="pip install 'tokedit[s3]' (s3fs) for s3://, gcsfs for gs://, huggingface_hub for hf://",
        ) from e
    except TypeError as e:  # an option this filesystem's constructor does not take
        raise InputError(
            f"{protocol}:// filesystem refuses the storage options ({e})",
            remedy=f"check {arg('storage_options')}; give options per protocol when URLs of "
            f"several kinds are used: {PER_PROTOCOL}",
        ) from e
    except ValueError as e:  # unknown protocol
        raise InputError(
            f"{protocol}:// is not a filesystem fsspec knows ({e})",
            remedy="use a local path or a URL such as s3://bucket/prefix, gs://..., hf://datasets/org/name",
        ) from e


def _filesystem_ready(p):
    """``p``, whose filesystem is made on first use; an ``s3://`` one now: s3fs takes no
    ``retries`` argument (it would pass it on to botocore's session, which refuses it), so
    it is taken out of the filesystem's keywords and set as its retry count. The paths
    derived from ``p`` share its filesystem."""
    if p.protocol not in _S3:
        return p
    with _filesystem_errors(p.protocol):
        fs = p.fs
    kwargs = getattr(fs, "kwargs", None)
    if isinstance(kwargs, dict) and "retries" in kwargs:
        fs.retries = int(kwargs.pop("retries"))
    return p


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
    for matches, describe in _DESCRIPTIONS:
        if matches(e, names, text):
            return describe(e, url)
    return None


def _no_package(e, names, text) -> bool:
    return "ImportError" in names


def _refused_options(e, names, text) -> bool:
    return isinstance(e, TypeError) and "unexpected keyword argument" in text


def _no_credentials(e, names, text) -> bool:
    return "NoCredentialsError" in names or "Unable to locate credentials" in text


def _no_bucket(e, names, text) -> bool:
    return "NoSuchBucket" in text or "bucket does not exist" in text


def _no_answer(e, names, text) -> bool:
    timeouts = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError"}
    timeouts |= {"ConnectionError", "TimeoutError", "ClientConnectorError", "ServerTimeoutError"}
    return bool(names & timeouts) or "Connect timeout" in text


# Answers of a store that is overloaded or failing, and connections closed before their
# answer was whole: retried (S3_DEFAULTS, S3_RETRIES), and reported once the tries are spent.
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded"}
_THROTTLED |= {"TooManyRequests", "TooManyRequestsException", "RequestThrottled"}
_SERVER_ERRORS = {500, 502, 503, 504}
_CUT = {"ConnectionClosedError", "ClientPayloadError", "ServerDisconnectedError"}
_CUT |= {"IncompleteRead", "IncompleteReadError", "ResponseStreamingError"}


def _answer(e: BaseException) -> tuple[str, int]:
    """The error code and HTTP status of the store's answer in ``e``'s chain (``""``, 0 if
    none: the error was not an answer)."""
    for err in _chain(e):
        response = getattr(err, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return str(response["Error"].get("Code") or ""), int(status)
    return "", 0


def _failing(e, names, text) -> bool:
    code, status = _answer(e)
    return code in _THROTTLED or status in _SERVER_ERRORS or bool(names & _CUT)


def _failing_error(e: BaseException, url: str) -> InputError:
    code, status = _answer(e)
    said = e.strerror if isinstance(e, OSError) and e.strerror else _first_line(e)
    if code in _THROTTLED or status == 503:
        what = f"the storage kept throttling requests ({code or status}: {said})"
    elif status in _SERVER_ERRORS:
        what = f"the storage kept failing with server errors ({code or status}: {said})"
    else:
        what = f"the connection to the storage kept closing before the answer was complete ({said})"
    return InputError(
        f"{url}: {what}; tokedit retried with back-off and gave up",
        remedy="rerun the same command when the storage answers again: it resumes, keeping "
        f"the shards already complete; allow more retries with {arg('storage_options', RETRIES)}",
    )


def _denied(e, names, text) -> bool:
    words = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden")
    return "PermissionError" in names or any(w in text for w in words)


_DESCRIPTIONS = (
    (
        _no_package,
        lambda e, url: InputError(
            f"{url}: this URL needs a filesystem package that cannot be imported ({_first_line(e)})",
            remedy="pip install 'tokedit[s3]' (s3fs) for s3://, gcsfs for gs://, huggingface_hub for hf://",
        ),
    ),
    (
        _refused_options,
        lambda e, url: InputError(
            f"{url}: the {url.split('://', 1)[0]}:// filesystem refuses the storage options ({e})",
            remedy=f"check {arg('storage_options')}; give options per protocol when URLs of "
            f"several kinds are used: {PER_PROTOCOL}",
        ),
    ),
    (
        _no_credentials,
        lambda e, url: InputError(
            f"{url}: no credentials found for this storage",
            remedy="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass "
            f"{arg('storage_options', KEY_SECRET)} (or {arg('storage_options', ANON)} for a "
            "public bucket)",
        ),
    ),
    (
        _no_bucket,
        lambda e, url: InputError(
            f"{url}: the bucket {_bucket(url)!r} does not exist",
            remedy="check the bucket name in the URL (and the endpoint_url of "
            f"{arg('storage_options')}), or create the bucket",
        ),
    ),
    (_failing, _failing_error),
    (
        _no_answer,
        lambda e, url: InputError(
            f"{url}: the storage endpoint does not answer ({_first_line(e)})",
            remedy="check the endpoint_url and the network; "
            f"{arg('storage_options', TIMEOUTS)} bounds the wait",
        ),
    ),
    (
        _denied,
        lambda e, url: InputError(
            f"{url}: access denied ({_first_line(e)})",
            remedy="check that the credentials are valid and may list, read and write this "
            "bucket and prefix",
        ),
    ),
)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _bucket(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0]


@contextlib.contextmanager
def storage_errors(path: Any) -> Iterator[None]:
    """Turn errors of the store into an :class:`InputError` naming ``path``; let the rest
    (a missing object, an error tokedit reports itself, any error on a local path) through
    unchanged."""
    if not is_remote(path):
        yield
        return
    try:
        yield
    except InputError:
        raise
    except Exception as e:
        described = describe_error(e, str(path))
        if described is None:
            raise
        raise described from e


def _raised_by_store(e: BaseException) -> bool:
    """Whether ``e`` (or an exception it chains) was raised inside a filesystem package."""
    for err in _chain(e):
        tb = err.__traceback__
        while tb is not None:
            module = tb.tb_frame.f_globals.get("__name__", "")
            if module.split(".", 1)[0] in _STORE_MODULES:
                return True
            tb = tb.tb_next
    return False


@contextlib.contextmanager
def command_storage_errors(urls: Sequence[Any]) -> Iterator[None]:
    """Around a whole command: an error raised by the store of one of ``urls`` (the
    command's URL arguments) that no inner :func:`storage_errors` translated becomes an
    :class:`InputError` naming them."""
    try:
        yield
    except InputError:
        raise
    except Exception as e:
        described = None
        if urls and _raised_by_store(e):
            described = describe_error(e, ", ".join(str(u) for u in urls))
        if described is None:
            raise
        raise described from e


# ----------------------------------------------------------------------------- listings


def _key(p) -> str:
    """The path ``p``'s filesystem takes (``bucket/prefix/name`` for s3)."""
    return type(p.fs)._strip_protocol(p.path)


def _missing(e: FileNotFoundError, p) -> bool:
    """A missing object, not an error of the store dressed as one (no bucket)."""
    return describe_error(e, str(p)) is None


def find(p) -> list[str]:
    """Every object under the prefix ``p``, as POSIX paths relative to it, sorted; ``[]``
    for none. A fresh listing (another process may have written since the last one)."""
    with storage_errors(p):
        p.fs.invalidate_cache(_key(p))
        try:
            keys = p.fs.find(_key(p))
        except FileNotFoundError as e:
            if not _missing(e, p):
                raise
            return []
    base = _key(p).rstrip("/") + "/"
    return sorted(k[len(base) :] for k in keys if k.startswith(base))


def children(p) -> list[str]:
    """The names directly under the prefix ``p`` (objects and sub-prefixes), sorted; ``[]``
    for none. A fresh listing."""
    with storage_errors(p):
        p.fs.invalidate_cache(_key(p))
        try:
            names = p.fs.ls(_key(p), detail=False)
        except (FileNotFoundError, NotADirectoryError) as e:
            if isinstance(e, FileNotFoundError) and not _missing(e, p):
                raise
            return []
    base = _key(p).rstrip("/")
    return sorted({n.rstrip("/").rsplit("/", 1)[-1] for n in names if n.rstrip("/") != base})


def read_bytes_or_none(p) -> bytes | None:
    """The object's bytes, or ``None`` if there is no such object (one GET: s3fs asks for
    the size, a HEAD, before a GET unless told to read in one request)."""
    kwargs = {"max_concurrency": 1} if p.protocol in _S3 else {}
    with storage_errors(p):
        try:
            return p.fs.cat_file(_key(p), **kwargs)
        except FileNotFoundError as e:
            if not _missing(e, p):
                raise
            return None


# ----------------------------------------------------------------------------- reads

_READAHEAD = {"cache_type": "readahead", "block_size": 8 << 20}


def open_read(path):
    """A binary stream of ``path``: a local file, or a buffered range-reading remote file
    (nothing is downloaded before the first bytes are used). An error of the store while
    it streams is an :class:`InputError` naming ``path``, which a reader does not take for
    a corrupt file."""
    if is_remote(path):
        with storage_errors(path):
            f = path.open("rb", **_READAHEAD)
        cache = getattr(f, "cache", None)
        fetch = getattr(cache, "fetcher", None)  # every range an fsspec file reads
        if fetch is not None:

            def fetcher(start, end):
                with storage_errors(path):
                    return fetch(start, end)

            cache.fetcher = fetcher
        return f
    return open(path, "rb")


def arrow_source(path):
    """What pyarrow readers take for ``path``: the local path itself (pyarrow's own fast
    reads), or a seekable remote file read in ranges."""
    return open_read(path) if is_remote(path) else path


@contextlib.contextmanager
def open_arrow_stream_input(path):
    """An Arrow input stream: a memory map locally, a streamed remote file otherwise."""
    import pyarrow as pa

    if is_remote(path):
        with open_read(path) as f:
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


def publish(local: Path, dest, temp_name: str) -> None:
    """Upload ``local`` to the hidden key ``temp_name`` beside ``dest``, copy it to ``dest``
    on the store (all or nothing), then delete the temporary key.

    A crash before the copy leaves only the temporary key, which the next run removes
    (:func:`tokedit.io.write.remove_stale_temp_files`); a crash after it leaves a complete
    object, which counts only once its manifest entry exists. A failed upload or copy
    removes the temporary key (if the store still answers) before it raises.
    """
    tmp = dest.with_name(temp_name)
    h = hashlib.sha256()
    with open(local, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    with storage_errors(dest):
        fs = dest.fs
        try:
            fs.put_file(str(local), _key(tmp))
            fs.cp_file(_key(tmp), _key(dest))  # a server-side copy (s3: CopyObject)
        except Exception:
            with contextlib.suppress(Exception):  # the store may not answer either
                fs.rm_file(_key(tmp))
            raise
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(_key(tmp))
    _PUBLISHED_SHA256[str(dest)] = h.hexdigest()


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes; for an object this process has just published, the hash
    of the bytes it uploaded (no second download)."""
    if is_remote(path):
        p = as_path(path)
        known = _PUBLISHED_SHA256.get(str(p))
        if known is not None:
            return known
        stream = open_read(p)
    else:
        stream = open(path, "rb")
    h = hashlib.sha256()
    with stream as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
