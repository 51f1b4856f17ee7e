"""A fault-injecting HTTP proxy in front of the local S3 server, for tests.

:class:`FaultProxy` listens on 127.0.0.1 and forwards every request, bytes unchanged (the
``Host`` header included, so SigV4 signatures still verify upstream), to the moto server.
A test arms it with :meth:`FaultProxy.fail`: ``times`` requests of an S3 operation
(``GetObject``, ``PutObject``, ``UploadPart``, ``CopyObject``, ``ListObjects``...) on keys
that match a pattern (the first ones, or those after ``after`` passed) get a fault instead
of the server's answer:

* ``"slowdown"``: ``503 Slow Down`` with S3's XML error body (code ``SlowDown``);
* ``"internal"``: ``500 Internal Server Error`` (code ``InternalError``);
* ``"drop"``: the connection is closed without an answer (the request never reaches the
  server);
* ``"cut"``: the request reaches the server (a write is done), then the first half of
  the bytes of its answer (status line, headers, body) is passed on and the connection is
  closed: a read cut mid-body, or a write whose answer never arrives whole.

Every request is logged (:attr:`FaultProxy.log`): when it arrived, its method, operation,
key, and what the proxy did with it (``"pass"`` or the fault).
"""

from __future__ import annotations

import fnmatch
import socket
import socketserver
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

ERRORS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": (
        500,
        "Internal Server Error",
        "InternalError",
        "We encountered an internal error. Please try again.",
    ),
}
FAULTS = (*ERRORS, "drop", "cut")


@dataclass
class Rule:
    """After ``after`` requests of ``op`` on a key matching ``key`` passed, the next
    ``times`` get ``fault``."""

    op: str
    key: str
    fault: str
    times: int
    after: int = 0
    seen: int = 0  # matching requests so far
    hits: int = 0  # faults injected

    def take(self, op: str, key: str) -> bool:
        """Whether this request gets the fault (counted)."""
        if self.hits >= self.times or op != self.op or not fnmatch.fnmatchcase(key, self.key):
            return False
        self.seen += 1
        if self.seen <= self.after:
            return False
        self.hits += 1
        return True


@dataclass
class Request:
    t: float  # time.monotonic() when the whole request had arrived
    method: str
    op: str
    key: str  # bucket/key, %-decoded
    did: str  # "pass" or a fault of FAULTS
    status: int | None = None  # the status answered (None: the connection was dropped)


def operation(method: str, target: str, headers: dict[str, str]) -> tuple[str, str]:
    """The S3 operation of a request and its ``bucket/key``."""
    parts = urlsplit(target)
    key = unquote(parts.path).lstrip("/")
    q = parse_qs(parts.query, keep_blank_values=True)
    copy = "x-amz-copy-source" in headers
    if method == "PUT":
        if "partNumber" in q:
            return ("UploadPartCopy" if copy else "UploadPart"), key
        return ("CopyObject" if copy else "PutObject"), key
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload", key
        if "uploadId" in q:
            return "CompleteMultipartUpload", key
        return ("DeleteObjects" if "delete" in q else "Post"), key
    if method == "DELETE":
        return ("AbortMultipartUpload" if "uploadId" in q else "DeleteObject"), key
    bucket_only = "/" not in key.rstrip("/")
    if method == "HEAD":
        return ("HeadBucket" if bucket_only else "HeadObject"), key
    if method == "GET" and (bucket_only or "list-type" in q):
        return "ListObjects", key.rstrip("/") + "/" + q.get("prefix", [""])[0]
    return ("GetObject" if method == "GET" else method), key


def _read_head(rfile) -> tuple[bytes, str, dict[str, str]] | None:
    lines = []
    while True:
        line = rfile.readline(65537)
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            if not lines:
                continue  # a stray CRLF between keep-alive requests
            break
        lines.append(line)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return b"".join(lines) + b"\r\n", lines[0].decode("latin-1").strip(), headers


def _read_body(rfile, headers: dict[str, str], *, until_close: bool = False) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = []
        while True:
            size_line = rfile.readline()
            out.append(size_line)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    line = rfile.readline()
                    out.append(line)
                    if line in (b"\r\n", b"\n", b""):
                        return b"".join(out)
            out.append(rfile.read(size + 2))
    if "content-length" in headers:
        return rfile.read(int(headers["content-length"]))
    return rfile.read() if until_close else b""


def _without_expect(head: bytes) -> bytes:
    lines = head.split(b"\r\n")
    return b"\r\n".join(ln for ln in lines if not ln.lower().startswith(b"expect:"))


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        upstream = None
        try:
            while True:
                got = _read_head(self.rfile)
                if got is None:
                    return
                head, start, headers = got
                method, target = start.split(" ", 2)[:2]
                if headers.get("expect", "").lower() == "100-continue":
                    self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    self.wfile.flush()
                    head = _without_expect(head)
                body = _read_body(self.rfile, headers)
                op, key = operation(method, target, headers)
                proxy = self.server.proxy
                fault = proxy._take(op, key)
                entry = proxy._record(method, op, key, fault or "pass")
                if fault in ERRORS:
                    entry.status = self._answer_error(fault, key, method)
                    continue
                if fault == "drop":
                    return
                if upstream is None:
                    upstream = socket.create_connection(proxy.upstream, timeout=60)
                    up_r = upstream.makefile("rb")
                upstream.sendall(head + body)
                keep = self._relay(up_r, method, entry, cut=fault == "cut")
                if not keep:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            if upstream is not None:
                upstream.close()

    def _answer_error(self, fault: str, key: str, method: str) -> int:
        status, reason, code, message = ERRORS[fault]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<Resource>/{key}</Resource><RequestId>{uuid.uuid4().hex[:16]}</RequestId></Error>"
        ).encode()
        payload = b"" if method == "HEAD" else body
        self.wfile.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nx-amz-request-id: fault\r\n\r\n".encode()
            + payload
        )
        self.wfile.flush()
        return status

    def _relay(self, up_r, method: str, entry: Request, *, cut: bool) -> bool:
        """Pass the upstream answer on (its first half and no more if ``cut``); whether the
        connections stay open."""
        got = _read_head(up_r)
        if got is None:
            return False
        head, start, headers = got
        status = int(start.split(" ", 2)[1])
        no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        closes = headers.get("connection", "").lower() == "close"
        body = b"" if no_body else _read_body(up_r, headers, until_close=closes)
        entry.status = status
        if cut:
            answer = head + body
            self.wfile.write(answer[: len(answer) // 2])
            self.wfile.flush()
            entry.status = None
            return False
        self.wfile.write(head + body)
        self.wfile.flush()
        return not closes


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy


class FaultProxy:
    """The proxy: ``endpoint`` is its URL; ``upstream`` the server's (``http://host:port``)."""

    def __init__(self, upstream: str):
        host, port = urlsplit(upstream).hostname, urlsplit(upstream).port
        self.upstream = (host, port)
        self.rules: list[Rule] = []
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def fail(self, op: str, key: str, fault: str, times: int, *, after: int = 0) -> Rule:
        """Answer ``times`` requests of ``op`` on a key matching ``key`` (an fnmatch
        pattern over ``bucket/key``; for a listing, ``bucket/prefix``; ``*`` crosses ``/``)
        with ``fault``, once ``after`` of them have passed. Rules are tried in the order
        they were added: two rules on the same requests give a sequence of faults."""
        assert fault in FAULTS, fault
        rule = Rule(op, key, fault, times, after)
        with self._lock:
            self.rules.append(rule)
        return rule

    def reset(self) -> None:
        """No rule, an empty log."""
        with self._lock:
            self.rules.clear()
            self.log.clear()

    def requests(self, op: str | None = None, key: str = "*") -> list[Request]:
        with self._lock:
            return [
                r
                for r in self.log
                if (op is None or r.op == op) and fnmatch.fnmatchcase(r.key, key)
            ]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _take(self, op: str, key: str) -> str | None:
        with self._lock:
            for rule in self.rules:
                if rule.take(op, key):
                    return rule.fault
        return None

    def _record(self, method: str, op: str, key: str, did: str) -> Request:
        entry = Request(time.monotonic(), method, op, key, did)
        with self._lock:
            self.log.append(entry)
        return entry
