"""Validated images per second: this project's download vs the tutorial's loop vs img2dataset.

All three fetch from the same local mirror, which answers every request after
200 ms (a typical web image fetch) with a distinct JPEG, in the same run,
interleaved. Each client runs in a process of its own, so its CPU time and peak
memory are its own. Nothing leaves the machine: the mirror is on 127.0.0.1.

The concurrent clients keep the same number of downloads in flight (512):

- this project: the download step (`tasks.download.run`) as `dvc repro` runs it,
  with 512 downloads in flight in one process (`task_runner: thread`) and 256 in
  each of 2 processes (`task_runner: process`, as img2dataset below): address
  checks, deadlines, validation by decoding, digest names, resize on store;
- the tutorial's loop: requests.get, cv2.imdecode, cv2.imwrite, one URL after the
  other (a 200-URL sample: it is slow);
- img2dataset: 2 processes x 256 threads, resizing like this project (longer side
  to 512 only if bigger, no re-encoding otherwise), sha256 like this project;
- for reference, this project's fetcher alone (`tasks.acquire.web.Fetcher`, 512 in flight):
  the same fetches with nothing done to the bodies, which shows how much of the
  step's time is the network and how much decoding, hashing and writing.

For each, its CPU time per validated image, and the mirror's CPU time per request
while it ran (both share the machine's cores, so this says who spends them).
Then this project (both ways) and img2dataset at 1,000 and 10,000 URLs: images per
second (img2dataset's start weighs less on the longer run), CPU time per validated
image and peak memory (the largest sum of the resident memory of the client's process
and its worker processes), which must not grow with the number of URLs.

The clients write in a folder of their own under --workdir (the system's temp
folder unless told), kept until the end. Creating a file is the part of storing an
image that depends most on the disk, so the time to create and write a 16 KB file
there is measured and printed beside the figures, before and after the clients.

    python bench/download.py [--urls 1000] [--rounds 2] [--large 10000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ENV, free_port

REPO = Path(__file__).resolve().parents[1]
LATENCY_S = 0.2
IN_FLIGHT = 512  # downloads in flight in each concurrent client, over all its processes
PROCESSES = 2
SEQUENTIAL_SAMPLE = 200
BASE_IMAGES = 64


# --- the mirror ----------------------------------------------------------------------------


def serve(port: int) -> None:
    """Distinct JPEGs at /img/<n>.jpg, each after LATENCY_S; HTTP/1.1 keep-alive.

    On asyncio rather than a thread per connection: the mirror stands in for remote
    servers, so it should take as little as it can of the cores the client under test
    runs on (about 0.05 ms of CPU a request, against 0.3 for http.server's threads).
    """
    sys.path.insert(0, str(REPO))
    from tasks.acquire import demo_images

    bases = [demo_images.encode(demo_images.render(("ship", "bicycle")[i % 2], i), "jpg") for i in range(BASE_IMAGES)]

    def body(n: int) -> bytes:  # a JPEG comment makes each URL's bytes (and digest) distinct
        base, text = bases[n % BASE_IMAGES], f"image {n}".encode()
        return base[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + base[2:]

    class Mirror(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.received = transport, b""

        def data_received(self, data: bytes) -> None:
            self.received += data
            while b"\r\n\r\n" in self.received:  # a GET has no body: each head is a request
                head, self.received = self.received.split(b"\r\n\r\n", 1)
                path = head.split(b" ", 2)[1].decode("latin-1")
                asyncio.get_running_loop().call_later(LATENCY_S, self.answer, path)

        def answer(self, path: str) -> None:
            if self.transport.is_closing():
                return
            try:
                data, status = body(int(path.rsplit("/", 1)[1].split(".")[0])), b"200 OK"
            except ValueError:
                data, status = b"not found", b"404 Not Found"
            head = b"HTTP/1.1 %s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % (status, len(data))
            self.transport.write(head + data)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Mirror, "127.0.0.1", port, backlog=1024)
        await server.serve_forever()

    asyncio.run(main())


# --- the clients (each in its own process) ----------------------------------------------------


def cpu_s() -> float:
    """CPU time of this process and its children so far, less the memory sampler's own."""
    total = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                for f in ("ru_utime", "ru_stime"))
    return total - (PeakMemory.running.cpu_s() if PeakMemory.running else 0.0)


class PeakMemory:
    """The largest resident memory of this process and its children together, sampled.

    The list of children is refreshed every tenth sample: listing them scans /proc,
    which costs more than reading their memory.
    """

    running: "PeakMemory | None" = None

    def __init__(self, every_s: float = 0.02):
        import psutil

        self.peak, self._stop = 0, threading.Event()
        me = psutil.Process()

        def sample():
            procs = [me]
            for n in itertools.count():
                if self._stop.wait(every_s):
                    return
                if n % 10 == 0:
                    with contextlib.suppress(psutil.Error):
                        procs = [me, *me.children(recursive=True)]
                total = 0
                for proc in procs:
                    with contextlib.suppress(psutil.Error):
                        total += proc.memory_info().rss
                self.peak = max(self.peak, total)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        PeakMemory.running = self

    def cpu_s(self) -> float:
        return time.clock_gettime(time.pthread_getcpuclockid(self._thread.ident))

    def stop_mb(self) -> float:
        self._stop.set()
        self._thread.join()
        PeakMemory.running = None
        return self.peak / 2**20


def client_project(urls: list[str], out: Path, processes: int) -> tuple[int, float, float]:
    sys.path.insert(0, str(REPO))
    from tasks import download, paths
    from tasks.params import validate
    from tasks.storage import files

    half = len(urls) // 2
    for cls, part in (("ships", urls[:half]), ("bikes", urls[half:])):
        files.write_text(out / paths.URLS / f"{cls}.txt", "\n".join(part) + "\n")
    workers = IN_FLIGHT // processes
    cfg = validate({"data": {"images_per_class": None},
                    "download": {"workers": workers, "per_host": workers, "min_images_per_class": 1,
                                 "task_runner": "thread" if processes == 1 else "process", "processes": processes,
                                 "chunk_size": 256}})  # chunks (and shards) of 256, so that processes share them
    start, cpu = time.monotonic(), cpu_s()
    summary = download.run(cfg, out)
    return sum(summary["ok"].values()), time.monotonic() - start, cpu_s() - cpu


def client_fetcher(urls: list[str], out: Path) -> tuple[int, float, float]:
    """This project's fetcher alone: the same fetches, no decoding, no files (where the step's time goes)."""
    sys.path.insert(0, str(REPO))
    from concurrent.futures import wait

    from tasks.acquire import web

    start, cpu = time.monotonic(), cpu_s()
    with web.Fetcher(web.Limits(in_flight=IN_FLIGHT, per_host=IN_FLIGHT, allowed_hosts=frozenset({"127.0.0.1"}))) as f:
        done, _ = wait([f.submit(url) for url in urls])
    return sum(d.result().ok for d in done), time.monotonic() - start, cpu_s() - cpu


def client_sequential(urls: list[str], out: Path) -> tuple[int, float, float]:
    """The tutorial's loop, one URL after the other."""
    import cv2
    import numpy as np
    import requests

    start, cpu, ok = time.monotonic(), cpu_s(), 0
    for i, url in enumerate(urls[:SEQUENTIAL_SAMPLE]):
        try:
            image = cv2.imdecode(np.frombuffer(requests.get(url, timeout=10).content, np.uint8), cv2.IMREAD_COLOR)
            if image is not None and image.ndim == 3:
                ok += cv2.imwrite(str(out / f"img{i}.jpg"), image)
        except Exception:
            pass
    return ok, time.monotonic() - start, cpu_s() - cpu


def client_img2dataset(urls: list[str], out: Path) -> tuple[int, float, float]:
    from img2dataset import download

    (out / "urls.txt").write_text("\n".join(urls) + "\n")
    processes = PROCESSES
    start, cpu = time.monotonic(), cpu_s()
    download(url_list=str(out / "urls.txt"), input_format="txt", output_folder=str(out / "images"),
             output_format="files", processes_count=processes, thread_count=IN_FLIGHT // processes,
             number_sample_per_shard=math.ceil(len(urls) / processes), image_size=512,
             resize_mode="keep_ratio_largest", resize_only_if_bigger=True, skip_reencode=True, min_image_size=32,
             timeout=10, retries=0, extract_exif=False, compute_hash="sha256", enable_wandb=False)
    seconds, cpu = time.monotonic() - start, cpu_s() - cpu
    ok = sum(json.loads(p.read_text())["successes"] for p in (out / "images").glob("*_stats.json"))
    return ok, seconds, cpu


CLIENTS = {  # name: (label, client)
    "project": ("this project, 1 process", lambda urls, out: client_project(urls, out, 1)),
    "project-processes": (f"this project, {PROCESSES} processes", lambda urls, out: client_project(urls, out, PROCESSES)),
    "sequential": ("the tutorial's loop", client_sequential),
    "img2dataset": (f"img2dataset, {PROCESSES} processes", client_img2dataset),
    "fetcher": ("(this project's fetcher alone)", client_fetcher),
}
PROJECT, BASELINES = ("project", "project-processes"), ("sequential", "img2dataset")


def mirror_cpu_s(mirror: subprocess.Popen) -> float:
    import psutil

    times = psutil.Process(mirror.pid).cpu_times()
    return times.user + times.system


def measure(kind: str, mirror: subprocess.Popen, port: int, count: int, out: Path) -> dict:
    """Run one client in a fresh process, writing in `out`; its figures and the mirror's CPU time meanwhile."""
    before = mirror_cpu_s(mirror)
    out.mkdir()
    done = subprocess.run([sys.executable, __file__, "client", kind, str(port), str(count), str(out)],
                          capture_output=True, text=True, env={**ENV, "WANDB_MODE": "disabled"}, cwd=out)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    if done.returncode or line is None:
        sys.exit(f"{kind} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(line.removeprefix("RESULT "))
    requests = min(count, SEQUENTIAL_SAMPLE) if kind == "sequential" else count
    return {**result, "rate": result["ok"] / result["seconds"], "cpu_ms": 1000 * result["cpu_s"] / result["ok"],
            "mirror_ms": 1000 * (mirror_cpu_s(mirror) - before) / requests}


def file_ms(folder: Path, n: int = 1000) -> float:
    """Milliseconds to create and write one 16 KB file in `folder`: the disk's part of storing an image."""
    folder.mkdir()
    data, start = bytes(16_000), time.perf_counter()
    for i in range(n):
        with open(folder / f"{i}.jpg", "xb") as out:
            out.write(data)
    return 1000 * (time.perf_counter() - start) / n


def wait_for(port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit("the mirror did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--urls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--large", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the clients write (a folder of their own in it, removed at the end)")
    args = parser.parse_args()
    port = free_port()
    mirror = subprocess.Popen([sys.executable, __file__, "serve", str(port)], env=ENV)
    # Every client's files stay until the end: right after thousands of files are deleted,
    # creating one can cost ten times as much for a while (measured on ext4 with online
    # discard), which would charge one client for the one before it.
    root = Path(tempfile.mkdtemp(prefix="bench-download-", dir=args.workdir))
    folders = (root / str(n) for n in itertools.count())
    try:
        disk_before = file_ms(next(folders))
        wait_for(port)
        runs: dict[str, list[dict]] = {k: [] for k in CLIENTS}
        for _ in range(args.rounds):  # interleaved, so a busy minute hits all alike
            for kind in CLIENTS:
                runs[kind].append(measure(kind, mirror, port, args.urls, next(folders)))
        scale = {(kind, n): measure(kind, mirror, port, n, next(folders)) for n in (1000, args.large)
                 for kind in (*PROJECT, "img2dataset")}
        disk_after = file_ms(next(folders))
    finally:
        mirror.terminate()
        mirror.wait()
        shutil.rmtree(root)

    rate = {k: statistics.mean(r["rate"] for r in v) for k, v in runs.items()}
    print(f"validated images per second, {args.urls} URLs at {LATENCY_S * 1000:.0f} ms each "
          f"(mean of {args.rounds} interleaved rounds; the tutorial's loop on a {SEQUENTIAL_SAMPLE}-URL sample)")
    print("(CPU: the client's processes per validated image; mirror: the mirror's CPU per request meanwhile)")
    print(f"{'client':<28} {'img/s':>8} {'rounds':>24} {'CPU ms/img':>11} {'mirror ms':>10} "
          + " ".join(f"{'vs ' + k:>16}" for k in BASELINES))
    for kind, runs_of_kind in runs.items():
        each = ", ".join(f"{r['rate']:.1f}" for r in runs_of_kind)
        cpu, mirror_ms = (statistics.mean(r[k] for r in runs_of_kind) for k in ("cpu_ms", "mirror_ms"))
        ratios = " ".join(f"{rate[kind] / rate[base]:>15.1f}x" for base in BASELINES) if kind in PROJECT else ""
        print(f"{CLIENTS[kind][0]:<28} {rate[kind]:>8.1f} {each:>24} {cpu:>11.2f} {mirror_ms:>10.2f} {ratios}")
    print("(the fetcher alone counts bodies fetched: it decodes and writes nothing)")
    print(f"creating and writing a 16 KB file in {args.workdir}: {disk_before:.3f} ms before the clients, "
          f"{disk_after:.3f} ms after")
    print()
    print("by size, one run each: CPU time per validated image (all the client's processes), peak memory (their sum)")
    print(f"{'client':<28} {'URLs':>7} {'img/s':>8} {'CPU ms/img':>11} {'peak MB':>8} {'vs img2dataset':>15}")
    for (kind, n), r in scale.items():
        ratio = f"{r['rate'] / scale[('img2dataset', n)]['rate']:>14.1f}x" if kind in PROJECT else ""
        print(f"{CLIENTS[kind][0]:<28} {n:>7} {r['rate']:>8.1f} {r['cpu_ms']:>11.2f} {r['peak_mb']:>8.0f} {ratio}")

if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]))
    elif sys.argv[1:2] == ["client"]:
        kind, port, count, out = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
        urls = [f"http://127.0.0.1:{port}/img/{i}.jpg" for i in range(count)]
        memory = PeakMemory()
        ok, seconds, cpu = CLIENTS[kind][1](urls, out)  # each (images, wall s, CPU s) of the work alone
        print("RESULT " + json.dumps({"ok": ok, "seconds": seconds, "cpu_s": cpu, "peak_mb": memory.stop_mb()}))
    else:
        main()
