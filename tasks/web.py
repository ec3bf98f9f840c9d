"""HTTP for URLs nobody vouches for: address rules, deadlines, byte caps, retries.

Image URL lists point anywhere: at dead hosts, at servers that drip one byte a
second or stream forever, at redirect loops, and at addresses inside the network
the pipeline runs in. Every fetch here

- goes to `http` or `https` only, and to a public address: every address a host
  resolves to is checked (loopback, private, link-local, multicast, reserved and
  unspecified ones are refused) unless the host is listed as allowed, and the
  connection is made to the address that was checked, so a second DNS answer
  cannot slip in. Redirects are followed here, hop by hop, each hop checked again;
- has a connect timeout, a read timeout and one deadline for the whole fetch
  (redirects, retries and the body included), and stops reading at a byte cap;
- retries connection errors, timeouts, 429 and 5xx with exponential backoff and
  jitter, honouring `Retry-After`, and never retries a 404 or a refusal;
- ends in a `Fetched` with a short stable reason code instead of an exception.

It speaks HTTP through urllib3, the library under requests, directly: requests'
per-request work (sessions, cookies, hooks, environment lookups) adds nothing
here and cost about a quarter of the download step's CPU time per image.
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import itertools
import random
import socket
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (DecodeError, HTTPError, NameResolutionError, NewConnectionError, ProtocolError,
                                ReadTimeoutError, SSLError)
from urllib3.exceptions import TimeoutError as HTTPTimeoutError

TRANSIENT_STATUS = {429, 500, 502, 503, 504}
READ_SIZE = 64 * 1024
USER_AGENT = "alexnet-dag (image downloader)"


class BlockedHost(Exception):
    """The destination resolves to an address the rules refuse."""


@dataclass(frozen=True)
class Limits:
    """How long and how much one fetch may take, and where it may go."""

    timeout_s: float = 10.0  # deadline for the whole fetch
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 5.0  # longest silence between two reads
    max_bytes: int = 20_000_000
    retries: int = 2
    backoff_s: float = 0.5
    max_redirects: int = 5
    per_host: int = 16  # concurrent connections to one host
    allowed_hosts: frozenset[str] = frozenset()


@dataclass
class Fetched:
    body: bytes  # empty when the body went to a sink, or when there is none
    reason: str = ""  # "" on success, else a reason code
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return not self.reason


def refused_address(address: str) -> bool:
    """True for addresses outside the public internet (and for multicast)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified


def public_addresses(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, or BlockedHost if any of them is refused."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    refused = [a for a in addresses if refused_address(a)]
    if refused:
        raise BlockedHost(f"{host} resolves to {refused[0]}")
    return addresses


def host_allowed(host: str, allowed: frozenset[str]) -> bool:
    return host.lower().rstrip(".").strip("[]") in allowed


def url_problem(url: str) -> str:
    """A reason code for URLs never worth fetching, else ""."""
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port
    except ValueError:
        return "invalid_url"
    if not parts.scheme:
        return "invalid_url"
    if parts.scheme.lower() not in ("http", "https"):
        return "bad_scheme"
    return "" if host else "invalid_url"


class _Guarded:
    """Mixed into urllib3's connections: check the resolved addresses, connect to one of them."""

    allowed: frozenset[str] = frozenset()

    def _new_conn(self):
        host = self._dns_host
        if host_allowed(host, self.allowed):
            return super()._new_conn()
        try:
            addresses = public_addresses(host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        error: Exception = NewConnectionError(self, f"no address for {host}")
        for address in addresses:  # connect to exactly what was checked
            self._dns_host = address
            try:
                return super()._new_conn()
            except OSError as exc:  # urllib3's connection errors are OSErrors
                error = exc
            finally:
                self._dns_host = host
        raise error


class _Watchdog:
    """Cuts a connection whose fetch is past its deadline, even while it waits for headers.

    Read timeouts bound each wait for data, not the sum of them: a server that
    drips its headers a byte at a time would hold a download forever. Shutting the
    socket down from this thread ends the blocked read at once.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._watched: dict[int, object] = {}
        self._ids = itertools.count()
        self._closed = False
        threading.Thread(target=self._run, name="fetch-deadlines", daemon=True).start()

    @contextlib.contextmanager
    def watch(self, conn, end: float):
        key = next(self._ids)
        with self._cond:
            self._watched[key] = conn
            heapq.heappush(self._heap, (end, key))
            if self._heap[0][1] == key:  # the earliest deadline now: the watchdog waits too long
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._watched.pop(key, None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                while self._heap and self._heap[0][1] not in self._watched:
                    heapq.heappop(self._heap)  # finished in time
                wait = self._heap[0][0] - time.monotonic() if self._heap else None
                if wait is None or wait > 0:
                    self._cond.wait(wait)
                    continue
                sock = getattr(self._watched.pop(heapq.heappop(self._heap)[1]), "sock", None)
                with contextlib.suppress(OSError, AttributeError):
                    sock.shutdown(socket.SHUT_RDWR)


class _Watched:
    """Mixed into urllib3's pools: the request and its headers run under the fetch's deadline."""

    watchdog: _Watchdog
    deadlines: threading.local

    def _make_request(self, conn, *args, **kwargs):
        with self.watchdog.watch(conn, self.deadlines.current.end):
            return super()._make_request(conn, *args, **kwargs)


def _guarded_pools(limits: Limits, watchdog: _Watchdog, deadlines: threading.local) -> urllib3.PoolManager:
    """A pool manager whose connections check addresses and whose requests keep the fetch's deadline."""
    attrs = {"allowed": limits.allowed_hosts}
    http = type("GuardedHTTPConnection", (_Guarded, HTTPConnection), attrs)
    https = type("GuardedHTTPSConnection", (_Guarded, HTTPSConnection), attrs)
    watched = {"watchdog": watchdog, "deadlines": deadlines}
    # Made by hand, not from the environment: proxies and .netrc would bypass the rules.
    manager = urllib3.PoolManager(num_pools=64, maxsize=limits.per_host, retries=False,
                                  headers={**urllib3.util.make_headers(accept_encoding=True), "Accept": "*/*",
                                           "User-Agent": USER_AGENT})
    manager.pool_classes_by_scheme = {
        "http": type("GuardedHTTPPool", (_Watched, HTTPConnectionPool), {"ConnectionCls": http, **watched}),
        "https": type("GuardedHTTPSPool", (_Watched, HTTPSConnectionPool), {"ConnectionCls": https, **watched}),
    }
    return manager


def _retry_after(response: urllib3.BaseHTTPResponse) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class _Deadline:
    """The time left for one fetch; waiting for our own host slot does not count."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def wait_for(self, slot: threading.BoundedSemaphore) -> None:
        start = time.monotonic()
        slot.acquire()
        self.end += time.monotonic() - start


class _Attempt(Exception):
    """One attempt's failure: a reason code, whether to retry, and how long the server asked us to wait."""

    def __init__(self, reason: str, transient: bool = False, wait_s: float | None = None):
        super().__init__(reason)
        self.reason, self.transient, self.wait_s = reason, transient, wait_s


class Fetcher:
    """GET under `Limits`; thread-safe, one connection pool per host."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._watchdog, self._deadlines = _Watchdog(), threading.local()
        self.pools = _guarded_pools(limits, self._watchdog, self._deadlines)
        self._hosts: dict[str, threading.BoundedSemaphore] = {}

    def close(self) -> None:
        self.pools.clear()
        self._watchdog.close()

    def _host_slot(self, url: str) -> threading.BoundedSemaphore:
        parts = urlsplit(url)
        key = f"{parts.hostname}:{parts.port}"
        slot = self._hosts.get(key)  # setdefault is atomic: two threads never get different slots
        return slot or self._hosts.setdefault(key, threading.BoundedSemaphore(self.limits.per_host))

    def get(self, url: str, sink: BinaryIO | None = None) -> Fetched:
        """The body of `url`, or why not. With `sink` (a file), the body is written there instead."""
        deadline = _Deadline(self.limits.timeout_s)
        attempt = 0
        while True:
            attempt += 1
            try:
                return Fetched(self._attempt(url, deadline, sink), attempts=attempt)
            except _Attempt as failure:
                left = deadline.left()
                if not failure.transient or attempt > self.limits.retries:
                    return Fetched(b"", failure.reason, attempt)
                pause = self.limits.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
                if failure.wait_s is not None:
                    pause = max(pause, failure.wait_s)
                if pause >= left:  # no time for another try
                    return Fetched(b"", failure.reason, attempt)
                time.sleep(pause)

    def _attempt(self, url: str, deadline: _Deadline, sink) -> bytes:
        for _ in range(self.limits.max_redirects + 1):
            if problem := url_problem(url):
                raise _Attempt(problem)
            slot = self._host_slot(url)
            deadline.wait_for(slot)
            try:
                with self._request(url, deadline) as response:
                    if location := response.get_redirect_location():
                        url = urljoin(url, location)
                        continue
                    if response.status >= 400:
                        code = response.status
                        raise _Attempt(f"http_{code}", code in TRANSIENT_STATUS, _retry_after(response))
                    return self._read(response, deadline, sink)
            finally:
                slot.release()
        raise _Attempt("too_many_redirects")

    def _request(self, url: str, deadline: _Deadline) -> urllib3.BaseHTTPResponse:
        left = deadline.left()
        if left <= 0:
            raise _Attempt("timeout")
        timeout = urllib3.Timeout(connect=min(self.limits.connect_timeout_s, left),
                                  read=min(self.limits.read_timeout_s, left))
        self._deadlines.current = deadline
        try:
            return self.pools.urlopen("GET", url, redirect=False, retries=False, preload_content=False,
                                      timeout=timeout)
        except BlockedHost:  # raised while connecting; urllib3 lets it through
            raise _Attempt("blocked_host") from None
        except ValueError:  # urllib3's LocationValueError, http.client's InvalidURL, a UnicodeError
            raise _Attempt("invalid_url") from None
        except (HTTPError, OSError) as exc:
            if deadline.left() <= 0:  # cut by the watchdog
                raise _Attempt("timeout") from None
            if isinstance(exc, SSLError):
                raise _Attempt("tls_error") from None
            if isinstance(exc, HTTPTimeoutError) and not isinstance(exc, NewConnectionError):  # connect or read
                raise _Attempt("timeout", transient=True) from None
            raise _Attempt("connection_error", transient=True) from None

    def _read(self, response: urllib3.BaseHTTPResponse, deadline: _Deadline, sink) -> bytes:
        """The body, streamed: cut at the byte cap and at the deadline, however slowly it drips."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.limits.max_bytes:
            raise _Attempt("too_large")
        body, size = bytearray(), 0
        if sink is not None:  # a retry starts the file again
            sink.seek(0)
            sink.truncate()
        try:
            while True:
                left = deadline.left()
                if left <= 0:
                    raise _Attempt("timeout", transient=True)
                _limit_silence(response, min(self.limits.read_timeout_s, left))
                piece = response.read1(READ_SIZE, decode_content=True)
                if not piece:
                    break
                size += len(piece)
                if size > self.limits.max_bytes:
                    raise _Attempt("too_large")
                if sink is None:
                    body += piece
                else:
                    sink.write(piece)
        except (ReadTimeoutError, socket.timeout):
            raise _Attempt("timeout", transient=True) from None
        except (ProtocolError, DecodeError, OSError):  # cut mid-body, or a broken chunked or gzip stream
            raise _Attempt("truncated", transient=True) from None
        return bytes(body)


def _limit_silence(response: urllib3.BaseHTTPResponse, seconds: float) -> None:
    """Give the next socket read at most `seconds`, so the deadline holds during a slow body."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))

