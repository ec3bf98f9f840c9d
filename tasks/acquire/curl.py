"""libcurl for `tasks.acquire.web`: pycurl bound to its own libcurl, the options every
handle gets, libcurl's errors as reason codes, and its multi interface driven from one
thread by the sockets and the timer it asks to be watched.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys
import time

import certifi

USER_AGENT = "alexnet-dag (image downloader)"
CA_BUNDLE = certifi.where()  # looked up once: the first lookup takes milliseconds


def _load_pycurl():
    """pycurl, bound to the libcurl its wheel ships.

    TensorFlow puts a libcurl of its own in the process's global symbol table; a
    pycurl loaded after it would bind to that older one and refuse to load.
    RTLD_DEEPBIND makes pycurl's module look up its own libraries first.
    """
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | getattr(os, "RTLD_DEEPBIND", 0))
    try:
        import pycurl
    finally:
        sys.setdlopenflags(flags)
    return pycurl


pycurl = _load_pycurl()

# libcurl's errors, as reason codes: (reason, worth a retry). Anything else is a connection_error.
ERRORS = {
    pycurl.E_OPERATION_TIMEDOUT: ("timeout", True),
    pycurl.E_FILESIZE_EXCEEDED: ("too_large", False),
    pycurl.E_PARTIAL_FILE: ("truncated", True),
    pycurl.E_BAD_CONTENT_ENCODING: ("truncated", True),
    pycurl.E_URL_MALFORMAT: ("invalid_url", False),
    pycurl.E_SSL_CONNECT_ERROR: ("tls_error", False),
    pycurl.E_PEER_FAILED_VERIFICATION: ("tls_error", False),
    pycurl.E_SSL_CERTPROBLEM: ("tls_error", False),
    pycurl.E_SSL_CIPHER: ("tls_error", False),
    pycurl.E_SSL_CACERT_BADFILE: ("tls_error", False),
}


def new_handle(max_bytes: int) -> pycurl.Curl:
    """A handle that follows no redirect and uses no proxy, capped at `max_bytes` of decoded body."""
    handle = pycurl.Curl()
    for option, value in (
        (pycurl.NOSIGNAL, 1),
        (pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS),
        (pycurl.FOLLOWLOCATION, 0),  # followed here, hop by hop
        (pycurl.PROXY, ""),  # never from the environment: a proxy would bypass the address rules
        (pycurl.ACCEPT_ENCODING, ""),  # what libcurl can decode; the byte cap counts decoded bytes
        (pycurl.MAXFILESIZE_LARGE, max_bytes),
        (pycurl.USERAGENT, USER_AGENT),
        (pycurl.HTTPHEADER, ["Accept: */*"]),
        (pycurl.CAINFO, CA_BUNDLE),
    ):
        handle.setopt(option, value)
    return handle


class Multi:
    """libcurl's multi interface, driven by the sockets and the timer it asks us to watch."""

    def __init__(self):
        self.curl = pycurl.CurlMulti()
        self.selector = selectors.DefaultSelector()
        self.timer: float | None = None  # when libcurl wants to be called back without socket activity
        self.curl.setopt(pycurl.M_SOCKETFUNCTION, self._watch)
        self.curl.setopt(pycurl.M_TIMERFUNCTION, self._set_timer)
        self.wake_r, self.wake_w = socket.socketpair()
        for end in (self.wake_r, self.wake_w):
            end.setblocking(False)
        self.selector.register(self.wake_r, selectors.EVENT_READ)

    def _watch(self, what: int, fd: int, multi, data) -> None:
        if what == pycurl.POLL_REMOVE:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)
            return
        events = {pycurl.POLL_IN: selectors.EVENT_READ, pycurl.POLL_OUT: selectors.EVENT_WRITE,
                  pycurl.POLL_INOUT: selectors.EVENT_READ | selectors.EVENT_WRITE}[what]
        try:
            self.selector.modify(fd, events)
        except KeyError:
            self.selector.register(fd, events)

    def _set_timer(self, ms: int) -> None:
        self.timer = None if ms < 0 else time.monotonic() + ms / 1000

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # a full pipe wakes the loop all the same; a closed one has no loop
            self.wake_w.send(b"\0")

    def wait(self, timeout: float | None) -> list[tuple[pycurl.Curl, int]]:
        """Run what is ready within `timeout` seconds; the handles that finished, each with libcurl's error (0: none)."""
        if self.timer is not None:
            due = max(0.0, self.timer - time.monotonic())
            timeout = due if timeout is None else min(timeout, due)
        for key, events in self.selector.select(timeout):
            if key.fileobj is self.wake_r:
                with contextlib.suppress(BlockingIOError):
                    self.wake_r.recv(4096)
                continue
            flags = (pycurl.CSELECT_IN if events & selectors.EVENT_READ else 0) | (
                pycurl.CSELECT_OUT if events & selectors.EVENT_WRITE else 0)
            self.curl.socket_action(key.fd, flags)
        if self.timer is not None and self.timer <= time.monotonic():
            self.timer = None
            self.run_due()
        finished = []
        while True:
            left, ok, failed = self.curl.info_read()
            finished += [(handle, 0) for handle in ok] + [(handle, errno) for handle, errno, _ in failed]
            if not left:
                return finished

    def run_due(self) -> None:
        """Let libcurl act on what is due now, such as starting transfers just added."""
        self.curl.socket_action(pycurl.SOCKET_TIMEOUT, 0)

    def close(self) -> None:
        self.curl.close()
        self.selector.close()
        self.wake_r.close()
        self.wake_w.close()
