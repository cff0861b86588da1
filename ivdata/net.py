"""HTTP(S) for video downloads and model endpoints, with the guards a fetch from the open network needs.

urllib alone follows a redirect to ftp://, forwards every header (an API key too) to whatever host a
redirect names, and waits for a whole buffer however slowly a server trickles it. Here:
- only http and https are fetched, also through redirects;
- credentials (Authorization, Cookie) go only to the origin (scheme, host, port) they were given for:
  a redirect elsewhere drops them;
- `read_chunks` hands data over as it arrives and bounds every socket read by the caller's deadline,
  so a time limit holds during slow reads, not only between 64 KiB buffers;
- `read_capped` reads a body up to a size cap.
Proxies from the environment keep working (urllib's ProxyHandler stays in the chain).
"""
from __future__ import annotations

import http.client
import re
import ssl
import time
import urllib.error
import urllib.request
from typing import Iterator
from urllib.parse import urlsplit

SCHEMES = ("http", "https")
CREDENTIAL_HEADERS = ("Authorization", "Cookie")
_DEFAULT_PORT = {"http": 80, "https": 443}


class NetError(ValueError):
    """A fetch refused or failed for a reason worth a clear one-line message."""


class DeadlineExceeded(TimeoutError):
    """The caller's deadline for the whole transfer passed."""


class ResponseTooLarge(NetError):
    pass


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urlsplit(url)
    scheme = p.scheme.lower()
    return scheme, (p.hostname or "").lower(), p.port or _DEFAULT_PORT.get(scheme)


def check_scheme(url: str) -> None:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise NetError(f"{url}: only http and https URLs are fetched, not {scheme or 'a bare path'}")


class _Redirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() not in SCHEMES:
            fp.close()
            raise NetError(f"{req.full_url} redirects to {newurl}: refused, only http and https are followed")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            for name in CREDENTIAL_HEADERS:
                new.remove_header(name)
        return new


def _open_recording_socket(handler: urllib.request.AbstractHTTPHandler, conn_class, req, **kw):
    """do_open with a connection class that remembers its socket on the response, so reads can be
    bounded by a deadline (the response keeps the socket only behind private attributes)."""
    socks: list = []

    class Connection(conn_class):
        def connect(self):
            super().connect()
            socks.append(self.sock)

    resp = handler.do_open(Connection, req, **kw)
    resp.ivkit_socket = socks[-1] if socks else None
    return resp


class _HTTP(urllib.request.HTTPHandler):
    def http_open(self, req):
        return _open_recording_socket(self, http.client.HTTPConnection, req)


class _HTTPS(urllib.request.HTTPSHandler):
    def __init__(self):
        self.ssl_context = ssl.create_default_context()
        super().__init__(context=self.ssl_context)

    def https_open(self, req):
        return _open_recording_socket(self, http.client.HTTPSConnection, req, context=self.ssl_context)


_OPENER = urllib.request.build_opener(_Redirects, _HTTP, _HTTPS)


def _time_left(deadline: float | None, timeout_s: float) -> float:
    if deadline is None:
        return timeout_s
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("deadline passed")
    return min(timeout_s, left)


def open_url(url: str, *, timeout_s: float, deadline: float | None = None, data: bytes | None = None,
             headers: dict | None = None, method: str | None = None):
    """urlopen with the guards above. Raises urllib.error.HTTPError for error statuses (as urlopen does),
    NetError for a refused scheme or redirect, DeadlineExceeded when the deadline has passed."""
    check_scheme(url)
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        return _OPENER.open(req, timeout=_time_left(deadline, timeout_s))
    except TimeoutError:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("deadline passed") from None
        raise


def read_chunks(resp, *, timeout_s: float, deadline: float | None = None, chunk: int = 1 << 16) -> Iterator[bytes]:
    """The body as it arrives (each piece at most `chunk` bytes). Every socket read waits at most until
    the deadline (DeadlineExceeded) or `timeout_s` without data (TimeoutError)."""
    sock = getattr(resp, "ivkit_socket", None)
    while True:
        left = _time_left(deadline, timeout_s)
        if sock is not None:
            sock.settimeout(left)
        try:
            data = resp.read1(chunk)
        except TimeoutError:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded("deadline passed") from None
            raise TimeoutError(f"no data for {timeout_s:g} s") from None
        if not data:
            return
        yield data


def read_capped(resp, limit: int, *, timeout_s: float, deadline: float | None = None) -> bytes:
    """The whole body, refused (ResponseTooLarge) as soon as it is known to exceed `limit` bytes."""
    declared = content_length(resp.headers)
    if declared is not None and declared > limit:
        raise ResponseTooLarge(f"response of {declared} bytes is over the {limit} byte limit")
    buf = bytearray()
    for data in read_chunks(resp, timeout_s=timeout_s, deadline=deadline):
        buf += data
        if len(buf) > limit:
            raise ResponseTooLarge(f"response is over the {limit} byte limit")
    return bytes(buf)


def content_length(headers) -> int | None:
    value = headers.get("Content-Length") if headers is not None else None
    return int(value) if value is not None and value.strip().isdigit() else None


def content_range(headers) -> tuple[int | None, int | None]:
    """(first byte, total size) from `Content-Range: bytes A-B/T` or `bytes */T`; None where absent."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", (headers.get("Content-Range") or "")
                     if headers is not None else "")
    if not m:
        return None, None
    first = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return first, total

