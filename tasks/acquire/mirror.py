"""The embedded demo source: a small HTTP server shaped like ImageNet's old API.

`GET /api/text/imagenet.synset.geturls?wnid=<wnid>` answers a CRLF-separated list of
image URLs, as image-net.org did until 2021. The images are generated on request
(see `demo_images`), and the lists carry the bad entries real lists carry: dead
links, HTML pages instead of images, truncated files, a host's "photo unavailable"
placeholder, and the same photo under a second URL. The pipeline starts the mirror
itself when its endpoint is on a loopback address and nothing answers.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tasks.acquire import demo_images
from tasks.config import Data

LIST_PATH = "/api/text/imagenet.synset.geturls"
# The demo synsets: ImageNet's wnids for ship and bicycle-built-for-two, as in the tutorial.
SYNSETS = {"n04194289": "ship", "n02834778": "bicycle"}
IMAGES_PER_SYNSET = 240
# Every BAD_EVERY-th entry of a list is a bad one, cycling through these kinds.
BAD_EVERY = 8
BAD_KINDS = ("dead", "html", "truncated", "placeholder", "duplicate")

log = logging.getLogger(__name__)


def image_format(index: int) -> str:
    return "png" if index % 7 == 3 else "jpg"


def url_list(base: str, wnid: str) -> list[str]:
    """The URLs a synset's list holds, good and bad, in a fixed order."""
    urls = []
    for i in range(IMAGES_PER_SYNSET):
        urls.append(f"{base}/img/{wnid}/{i}.{image_format(i)}")
        if i % BAD_EVERY == BAD_EVERY - 1:
            bad = BAD_KINDS[(i // BAD_EVERY) % len(BAD_KINDS)]
            urls.append(f"{base}/img/{wnid}/{bad}-{i}.jpg")
    return urls


@lru_cache(maxsize=1024)
def image_bytes(wnid: str, index: int, fmt: str) -> bytes:
    return demo_images.encode(demo_images.render(SYNSETS[wnid], index), fmt, quality=85 + index % 10)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many downloads connect at once


class _Handler(BaseHTTPRequestHandler):
    server_version = "alexnet-mirror/1"

    def log_message(self, format, *args):  # keep request lines out of the pipeline's output
        log.debug("mirror: " + format, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        parts = urlsplit(self.path)
        if parts.path == LIST_PATH:
            wnid = parse_qs(parts.query).get("wnid", [""])[0]
            if wnid not in SYNSETS:
                return self._send(HTTPStatus.NOT_FOUND, b"unknown wnid\r\n", "text/plain")
            base = f"http://{self.headers.get('Host') or '%s:%d' % self.server.server_address[:2]}"
            body = "\r\n".join(url_list(base, wnid)) + "\r\n"
            return self._send(HTTPStatus.OK, body.encode(), "text/plain; charset=utf-8")
        segments = parts.path.strip("/").split("/")
        if len(segments) != 3 or segments[0] != "img" or segments[1] not in SYNSETS:
            return self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
        wnid, name = segments[1], segments[2]
        stem, _, fmt = name.partition(".")
        kind, _, number = stem.rpartition("-")
        if not number.isdigit() or fmt not in ("jpg", "png") or kind not in ("",) + BAD_KINDS:
            return self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
        index = int(number)
        if kind == "dead":
            return self._send(HTTPStatus.NOT_FOUND, b"<h1>404 Not Found</h1>", "text/html")
        if kind == "html":  # a photo page, answered with 200 and an image content type
            page = f"<html><body><h1>Photo {index}</h1><img src='/img/{wnid}/{index}.jpg'></body></html>"
            return self._send(HTTPStatus.OK, page.encode(), "image/jpeg")
        if kind == "placeholder":  # what a photo host answers for a removed photo
            return self._send(HTTPStatus.OK, demo_images.placeholder(), "image/bmp")
        if kind == "duplicate":  # the same photo as entry `index`, under another URL
            fmt = image_format(index)
        data = image_bytes(wnid, index, fmt)
        if kind == "truncated":
            data = data[: len(data) // 2]
        self._send(HTTPStatus.OK, data, f"image/{'jpeg' if fmt == 'jpg' else 'png'}")


class Mirror:
    """The mirror on (host, port) in a background thread; port 0 picks a free one."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.server = _Server((host, port), _Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="alexnet-mirror", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def endpoint(self) -> str:
        return f"{self.base_url}{LIST_PATH}?wnid={{wnid}}"

    def __enter__(self) -> "Mirror":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def host_port(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint)
    host = parts.hostname or "127.0.0.1"
    return ("127.0.0.1" if host == "localhost" else host), parts.port or 80


def answering(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


@contextlib.contextmanager
def serving_if_needed(data: Data) -> Iterator[None]:
    """Start the mirror at the endpoint's loopback address if nothing answers there (and a class is read
    from URLs: archives and folders never are from the mirror)."""
    host, port = host_port(data.url_list_endpoint)
    online = any(data.source_of(name) not in ("folder", "archive", "ilsvrc2012") for name in data.classes)
    if not (online and data.embedded_mirror and data.endpoint_is_loopback()) or answering(host, port):
        yield
        return
    log.info("starting the embedded demo mirror on %s:%d", host, port)
    with Mirror(host, port):
        yield
