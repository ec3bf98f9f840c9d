"""HTTP for URLs nobody vouches for: address rules, deadlines, byte caps, retries.

Image URL lists point anywhere: at dead hosts, at servers that drip one byte a
second or stream forever, at redirect loops, and at addresses inside the network
the pipeline runs in. Every fetch here

- goes to `http` or `https` only, and to a public address: the address of every
  connection is checked as it is opened (loopback, private, link-local, multicast,
  reserved and unspecified ones are refused) unless the host is listed as allowed,
  so what is checked is what is dialled, whatever DNS answers next. Redirects are
  followed here, hop by hop, each hop's URL and connection checked again;
- has a connect timeout, a read timeout (the longest silence) and one deadline for
  the whole fetch (redirects, retries and the body included), and stops reading
  at a byte cap (after decompression, so gzip bombs stop too);
- retries connection errors, timeouts, 429 and 5xx with exponential backoff and
  jitter, honouring `Retry-After`, and never retries a 404 or a refusal;
- ends in a `Fetched` with a short stable reason code instead of an exception.

Fetches run on libcurl's multi interface (pycurl), all of a process's on one
thread: a transfer in flight costs a socket and a few callbacks, not a thread
blocked in Python, so hundreds wait on slow hosts at once for little CPU (see
docs/benchmarks.md; the libcurl plumbing is in `tasks.acquire.curl`).
`Fetcher.submit` can be called from any thread.
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import itertools
import random
import socket
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from concurrent.futures import Future
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import BinaryIO
from urllib.parse import quote, urlsplit

from tasks.acquire import curl
from tasks.acquire.curl import pycurl

TRANSIENT_STATUS = {429, 500, 502, 503, 504}
URL_CHARACTERS = ":/?#[]@!$&'()*+,;=%~"  # left as they are; others are %-escaped


@dataclass(frozen=True)
class Limits:
    """How long and how much one fetch may take, where it may go, and how many run at once."""

    timeout_s: float = 10.0  # deadline for the whole fetch
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 5.0  # longest silence while waiting for or reading a response
    max_bytes: int = 20_000_000
    retries: int = 2
    backoff_s: float = 0.5
    max_redirects: int = 5
    in_flight: int = 64  # transfers at once
    per_host: int = 16  # of them to one host
    allowed_hosts: frozenset[str] = frozenset()


@dataclass
class Fetched:
    body: bytes  # empty when the body went to a sink, or when there is none
    reason: str = ""  # "" on success, else a reason code
    attempts: int = 0
    elapsed_s: float = 0.0  # from the first try to the end, waits for a free slot left out

    @property
    def ok(self) -> bool:
        return not self.reason


def refused_address(address: str) -> bool:
    """True for addresses outside the public internet (and for multicast)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified


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


def _retry_after(value: bytes) -> float | None:
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        return max(0.0, parsedate_to_datetime(text).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _started() -> Future:
    """A future its caller cannot cancel: the fetch thread alone decides how it ends."""
    future: Future = Future()
    future.set_running_or_notify_cancel()
    return future


class _Transfer:
    """One URL's fetch across its attempts and redirect hops; libcurl calls its callbacks."""

    def __init__(self, url: str, sink: BinaryIO | None, limits: Limits):
        self.first_url = self.url = url
        self.sink, self.limits = sink, limits
        self.future: Future[Fetched] = _started()
        self.attempts = self.hops = 0
        self.started = 0.0
        self.end: float | None = None  # the deadline, from the first start; waits for a slot move it
        self.queued_at = time.monotonic()
        self.begin_hop()

    def begin_hop(self) -> None:
        parts = urlsplit(self.url)
        self.host = f"{parts.hostname}:{parts.port}"  # the key of its per-host slots
        self.allowed = host_allowed(parts.hostname or "", self.limits.allowed_hosts)
        self.parts: list[bytes] = []
        self.size = self.status = 0
        self.retry_after: float | None = None
        self.refused = False  # a connection was refused by the address rules
        self.sink_failed = False  # writing to the sink failed (a full disk, say)
        self.quiet_until = 0.0

    # --- libcurl's callbacks (on the fetch thread) ---

    def header(self, line: bytes) -> None:
        self.quiet_until = time.monotonic() + self.limits.read_timeout_s
        if line.startswith(b"HTTP/"):  # a new response (after a 100 Continue, say)
            with contextlib.suppress(IndexError, ValueError):
                self.status = int(line.split()[1])
        elif line[:12].lower() == b"retry-after:":
            self.retry_after = _retry_after(line[12:])

    def write(self, data: bytes) -> int | None:
        self.quiet_until = time.monotonic() + self.limits.read_timeout_s
        if self.status >= 300:  # a redirect's or an error's body: not wanted
            return None
        self.size += len(data)
        if self.size > self.limits.max_bytes:  # a body of unknown length that grew too long
            return 0  # libcurl aborts the transfer
        if self.sink is None:
            self.parts.append(data)
            return None
        try:
            self.sink.write(data)
        except OSError:
            self.sink_failed = True
            return 0
        return None

    def open_socket(self, purpose: int, address) -> socket.socket | int:
        if not self.allowed and refused_address(address.addr[0]):
            self.refused = True
            return pycurl.SOCKET_BAD
        return socket.socket(address.family, address.socktype, address.protocol)


class Fetcher:
    """GETs under `Limits`: up to `in_flight` at once (`per_host` to one host), on one thread.

    `submit` (any thread) returns a future; `get` waits for it. Transfers that wait
    for a free slot wait in order, and that wait does not count against their deadline.
    """

    def __init__(self, limits: Limits):
        self.limits = limits
        self._multi = curl.Multi()
        self._inbox: deque[_Transfer] = deque()  # from other threads
        self._queue: deque[_Transfer] = deque()  # waiting for a slot
        self._parked: defaultdict[str, deque[_Transfer]] = defaultdict(deque)  # waiting for their host
        self._per_host: Counter[str] = Counter()
        self._running: dict[pycurl.Curl, _Transfer] = {}
        self._idle: list[pycurl.Curl] = []
        self._later: list[tuple[float, int, _Transfer]] = []  # retries waiting out their backoff
        self._ended: list[tuple[Future[Fetched], Fetched]] = []  # results not handed over yet
        self._order = itertools.count()
        self._closed = False
        self._lock = threading.Lock()  # between submit and the fetch thread's end
        self._thread = threading.Thread(target=self._run, name="fetch", daemon=True)
        self._thread.start()

    def submit(self, url: str, sink: BinaryIO | None = None) -> Future[Fetched]:
        """Fetch `url` in the background. With `sink` (a file), the body is written there instead."""
        url = quote(url, safe=URL_CHARACTERS)  # as browsers do: spaces, controls and non-ASCII escaped
        if problem := url_problem(url):
            future = _started()
            future.set_result(Fetched(b"", problem))
            return future
        transfer = _Transfer(url, sink, self.limits)
        with self._lock:
            if self._closed:
                raise RuntimeError("the fetcher is closed")
            first = not self._inbox  # later ones go with it: the fetch thread takes the whole inbox at once
            self._inbox.append(transfer)
        if first:
            self._multi.wake()
        return transfer.future

    def get(self, url: str, sink: BinaryIO | None = None) -> Fetched:
        return self.submit(url, sink).result()

    def close(self) -> None:
        """Stop; fetches not finished yet end with a RuntimeError."""
        with self._lock:
            self._closed = True
        self._multi.wake()
        self._thread.join()

    def __enter__(self) -> "Fetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the fetch thread ---

    def _run(self) -> None:
        tick = min(0.05, self.limits.read_timeout_s / 5)  # how often silences are checked
        next_sweep = 0.0
        try:
            while not self._closed:
                if self._inbox:
                    with self._lock:  # under submit's lock, so a submit that did not wake us is taken now
                        self._queue.extend(self._inbox)
                        self._inbox.clear()
                now = time.monotonic()
                while self._later and self._later[0][0] <= now:
                    _, _, transfer = heapq.heappop(self._later)
                    transfer.queued_at = now
                    self._queue.append(transfer)
                self._start_ready()
                waits = [self._later[0][0] - now] if self._later else []
                if self._running:
                    if now >= next_sweep:
                        self._cut_silent(now)
                        next_sweep = now + tick
                    waits.append(next_sweep - now)
                for handle, errno in self._multi.wait(max(0.0, min(waits)) if waits else None):
                    self._finished(handle, errno)
                self._hand_over()
        finally:
            with self._lock:
                self._closed = True
            for future, fetched in self._ended:
                future.set_result(fetched)
            error = sys.exc_info()[1]  # a bug, if not None: say so to every waiting caller
            stopped = RuntimeError("the fetcher was closed before this fetch ended" + (f" ({error!r})" if error else ""))
            for transfer in [*self._inbox, *self._queue, *self._running.values(),
                             *(t for _, _, t in self._later), *itertools.chain(*self._parked.values())]:
                transfer.future.set_exception(stopped)
            for handle in [*self._running, *self._idle]:
                handle.close()
            self._multi.close()

    def _end(self, transfer: _Transfer, fetched: Fetched) -> None:
        fetched.attempts, fetched.elapsed_s = transfer.attempts, round(time.monotonic() - transfer.started, 3)
        self._ended.append((transfer.future, fetched))

    def _hand_over(self) -> None:
        """Start the transfers that ended ones made room for, then hand the results to their callers.

        In that order, because a caller's callback (validating a body, say) wakes threads
        that compete with this one for the interpreter: the next requests go out first.
        """
        if not self._ended:
            return
        self._start_ready()
        self._multi.run_due()
        ended, self._ended = self._ended, []
        for future, fetched in ended:
            future.set_result(fetched)

    def _start_ready(self) -> None:
        while self._queue and len(self._running) < self.limits.in_flight:
            transfer = self._queue.popleft()
            if self._per_host[transfer.host] >= self.limits.per_host:
                self._parked[transfer.host].append(transfer)
            else:
                self._start(transfer)

    def _handle(self) -> pycurl.Curl:
        return self._idle.pop() if self._idle else curl.new_handle(self.limits.max_bytes)

    def _start(self, transfer: _Transfer) -> None:
        now = time.monotonic()
        if transfer.end is None:
            transfer.started, transfer.end = now, now + self.limits.timeout_s
        else:
            waited = now - transfer.queued_at
            transfer.started += waited
            transfer.end += waited
        if transfer.hops == 0:  # a new attempt
            transfer.attempts += 1
            if transfer.sink is not None:
                try:
                    transfer.sink.seek(0)
                    transfer.sink.truncate()
                except OSError:
                    return self._end(transfer, Fetched(b"", "write_error"))
        left = transfer.end - now
        transfer.quiet_until = now + self.limits.connect_timeout_s + self.limits.read_timeout_s
        handle = self._handle()
        handle.setopt(pycurl.URL, transfer.url)
        handle.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(1000 * min(self.limits.connect_timeout_s, left))))
        handle.setopt(pycurl.TIMEOUT_MS, max(1, int(1000 * left)))
        handle.setopt(pycurl.HEADERFUNCTION, transfer.header)
        handle.setopt(pycurl.WRITEFUNCTION, transfer.write)
        handle.setopt(pycurl.OPENSOCKETFUNCTION, transfer.open_socket)
        self._per_host[transfer.host] += 1
        self._running[handle] = transfer
        self._multi.curl.add_handle(handle)

    def _release(self, handle: pycurl.Curl) -> _Transfer:
        transfer = self._running.pop(handle)
        self._multi.curl.remove_handle(handle)
        self._idle.append(handle)
        self._per_host[transfer.host] -= 1
        if parked := self._parked.get(transfer.host):
            self._queue.appendleft(parked.popleft())  # first in line: it has waited longest
            if not parked:
                del self._parked[transfer.host]
        if not self._per_host[transfer.host]:
            del self._per_host[transfer.host]
        return transfer

    def _cut_silent(self, now: float) -> None:
        """End transfers silent for longer than the read timeout (libcurl only bounds whole-second stalls)."""
        for handle in [h for h, t in self._running.items() if t.quiet_until < now]:
            self._failed(self._release(handle), "timeout", transient=True)

    def _finished(self, handle: pycurl.Curl, errno: int) -> None:
        location = handle.getinfo(pycurl.REDIRECT_URL) if not errno else None
        transfer = self._release(handle)
        if errno:
            reason, transient = curl.ERRORS.get(errno, ("connection_error", True))
            if transfer.refused and errno == pycurl.E_COULDNT_CONNECT:
                reason, transient = "blocked_host", False
            elif errno == pycurl.E_WRITE_ERROR:  # the write callback stopped it
                reason, transient = ("write_error" if transfer.sink_failed else "too_large"), False
            elif errno in (pycurl.E_RECV_ERROR, pycurl.E_GOT_NOTHING) and transfer.status:  # cut mid-response
                reason = "truncated"
            self._failed(transfer, reason, transient)
        elif 300 <= transfer.status < 400 and location:
            self._redirect(transfer, location)
        elif transfer.status >= 400:
            status = transfer.status
            self._failed(transfer, f"http_{status}", status in TRANSIENT_STATUS, transfer.retry_after)
        else:
            self._end(transfer, Fetched(b"".join(transfer.parts)))

    def _redirect(self, transfer: _Transfer, location: str) -> None:
        transfer.hops += 1
        if transfer.hops > self.limits.max_redirects:
            return self._failed(transfer, "too_many_redirects", transient=False)
        if problem := url_problem(location):
            return self._failed(transfer, problem, transient=False)
        transfer.url = location
        transfer.begin_hop()
        transfer.queued_at = time.monotonic()
        self._queue.append(transfer)

    def _failed(self, transfer: _Transfer, reason: str, transient: bool, wait_s: float | None = None) -> None:
        """Retry after a backoff if it is worth it and there is time; else the fetch ends with `reason`."""
        now = time.monotonic()
        pause = self.limits.backoff_s * 2 ** (transfer.attempts - 1) * random.uniform(0.5, 1.5)
        if wait_s is not None:
            pause = max(pause, wait_s)
        if not transient or transfer.attempts > self.limits.retries or pause >= transfer.end - now:
            self._end(transfer, Fetched(b"", reason))
            return
        transfer.url, transfer.hops = transfer.first_url, 0
        transfer.begin_hop()
        heapq.heappush(self._later, (now + pause, next(self._order), transfer))
