"""A hostile image host on 127.0.0.1: every way a real URL list goes wrong, one path each."""

from __future__ import annotations

import gzip
import io
import struct
import threading
import time
import zlib
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
from PIL import Image

from tasks.acquire import demo_images


def photo(seed: int, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    """A distinct BGR image per seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    return cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def cmyk_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("CMYK", (80, 60), (0, 255, 255, 0)).save(out, "JPEG")  # pure red
    return out.getvalue()


def turned_jpeg(image: np.ndarray) -> bytes:
    """A JPEG stored on its side with the EXIF orientation that sets it upright (6: turn 90 degrees clockwise),
    as cameras write them."""
    out, exif = io.BytesIO(), Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(image[:, :, ::-1]))).save(out, "JPEG", quality=90, exif=exif)
    return out.getvalue()


def alpha_png() -> bytes:
    rgba = np.zeros((60, 80, 4), np.uint8)
    rgba[:, :40] = (255, 0, 0, 255)  # opaque blue on the left, transparent on the right
    return png(rgba)


def bomb_png(side: int = 100_000) -> bytes:
    """A valid PNG header that claims side x side pixels, on a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def bomb_jpeg(side: int = 60_000) -> bytes:
    """A small JPEG whose frame header claims side x side pixels."""
    body = bytearray(jpeg(photo(12)))
    at = body.index(b"\xff\xc0")  # the baseline frame header: length, precision, height, width
    body[at + 5:at + 9] = struct.pack(">HH", side, side)
    return bytes(body)


GOOD = jpeg(photo(1))
BODIES = {
    "/good.jpg": GOOD,
    "/good2.jpg": jpeg(photo(2)),
    "/good.png": png(photo(3)),
    "/gray.jpg": jpeg(cv2.cvtColor(photo(4), cv2.COLOR_BGR2GRAY)),
    "/cmyk.jpg": cmyk_jpeg(),
    "/alpha.png": alpha_png(),
    "/deep.png": png((photo(5).astype(np.uint16) * 257)),
    "/big.jpg": jpeg(photo(6, (300, 900))),
    "/turned.jpg": turned_jpeg(photo(10)),
    "/big-turned.jpg": turned_jpeg(photo(11, (300, 900))),
    "/dup-a.jpg": jpeg(photo(7)),
    "/dup-b.jpg": jpeg(photo(7)),
    "/shared.jpg": jpeg(photo(8)),
    "/placeholder.jpg": demo_images.placeholder(),
    "/truncated.jpg": GOOD[: len(GOOD) // 2],
    "/corrupt.jpg": GOOD[:2] + b"\0" * 300 + GOOD[-2:],
    "/tiny.png": png(photo(9, (8, 8))),
    "/bomb.png": bomb_png(),
    "/bomb.jpg": bomb_jpeg(),
    "/empty.jpg": b"",
    "/page.jpg": b"<html><body><h1>Photo</h1><img src='/good.jpg'></body></html>",
}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": "image/jpeg", "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        try:
            self.answer()
        finally:
            self.server.finished[self.path.split("?")[0]].set()

    def answer(self):
        server: HostileServer = self.server
        path = self.path.split("?")[0]
        server.hits[path] += 1
        server.times.setdefault(path, []).append(time.monotonic())
        first = server.hits[path] == 1
        if path in BODIES:
            return self.send(200, BODIES[path])
        if path.startswith("/photo/"):  # /photo/<n>.jpg: a distinct image per n
            return self.send(200, jpeg(photo(1000 + int(path[7:].split(".")[0]))))
        if path.startswith("/slow/"):  # the same, a little later
            with server.lock:
                server.in_flight += 1
                server.most_in_flight = max(server.most_in_flight, server.in_flight)
            time.sleep(server.slow_s)
            with server.lock:
                server.in_flight -= 1
            return self.send(200, jpeg(photo(1000 + int(path[6:].split(".")[0]))))
        if path == "/missing.jpg":
            return self.send(404, b"<h1>Not found</h1>", {"Content-Type": "text/html"})
        if path == "/busy-once.jpg":  # 429 with Retry-After, then the image
            return self.send(429, headers={"Retry-After": "1"}) if first else self.send(200, jpeg(photo(10)))
        if path == "/down-once.jpg":  # a 503, then the image
            return self.send(503) if first else self.send(200, jpeg(photo(11)))
        if path == "/down.jpg":
            return self.send(503)
        if path.startswith("/hop/"):  # /hop/3 -> /hop/2 -> /hop/1 -> /hop/0 -> an image
            n = int(path.rsplit("/", 1)[1])
            return self.send(302, headers={"Location": f"/hop/{n - 1}" if n > 1 else "/photo/999.jpg"})
        if path == "/loop.jpg":
            return self.send(302, headers={"Location": "/loop.jpg"})
        if path == "/to-forbidden.jpg":  # a redirect to a loopback address nobody allowed
            return self.send(302, headers={"Location": f"http://127.0.0.2:{server.port}/good.jpg"})
        if path == "/to-ftp.jpg":
            return self.send(301, headers={"Location": "ftp://127.0.0.1/good.jpg"})
        if path == "/enormous.jpg":  # declares 10 GB
            self.send_response(200)
            self.send_header("Content-Length", str(10 * 1024**3))
            self.end_headers()
            return self.stream(b"\xff" * 65536, pause=0.0)
        if path == "/endless.jpg":  # no length, never ends
            self.send_response(200)
            self.end_headers()
            return self.stream(b"\xff\xd8" + b"\0" * 65534, pause=0.0)
        if path == "/drip.jpg":  # a byte at a time, never silent for long
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            return self.stream(GOOD[:1], pause=0.05)
        if path == "/slow-headers.jpg":  # a header a byte at a time for 5 s, then an image
            self.send_response(200)
            self.flush_headers()
            self.wfile.write(b"X-Slow: ")
            for _ in range(100):
                try:
                    self.wfile.write(b"a")
                    self.wfile.flush()
                except OSError:  # the client gave up before the headers were done
                    server.cut.add(path)
                    return None
                if server.stop.wait(0.05):
                    return None
            self.wfile.write(b"\r\n")
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD)
            return None
        if path == "/hang.jpg":  # accepts, then says nothing
            server.stop.wait()
            return None
        if path == "/cut.jpg" or (path == "/cut-once.jpg" and first):  # promises more than it sends, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD[:100])
            return None
        if path == "/cut-once.jpg":
            return self.send(200, GOOD)
        if path == "/gzip-bomb.jpg":  # 50 MB of zeros in a small gzip body
            body = gzip.compress(b"\0" * 50_000_000, compresslevel=9)
            return self.send(200, body, {"Content-Encoding": "gzip"})
        return self.send(404)

    def stream(self, piece: bytes, pause: float) -> None:
        try:
            while not self.server.stop.is_set():
                self.wfile.write(piece)
                self.wfile.flush()
                if pause:
                    self.server.stop.wait(pause)
        except OSError:  # the client hung up: what it should do
            pass


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        pass  # clients that hang up on the endless and enormous bodies are the point

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: Counter = Counter()
        self.cut: set[str] = set()
        self.finished: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.times: dict[str, list[float]] = {}
        self.stop = threading.Event()
        self.slow_s = 0.05
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> "HostileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.shutdown()
        self.server_close()
