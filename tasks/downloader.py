"""Fetch, validate and store URLs, a chunk at a time, in whatever process runs the chunk.

The download step (`tasks.download`) plans the chunks and merges their records;
this module is what a chunk needs, and nothing heavier (no Prefect, no pandas),
so that worker processes start fast. Each process keeps one `Downloader` (its
fetch thread, connections and validation threads) for all the chunks it runs.

Each chunk records its finished rows in one CSV, written atomically under
.alexnet/download/, and images are written atomically under their digest, so a run
killed at any moment resumes where it stopped.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import multiprocessing
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from tasks import files, images, paths, sources, web
from tasks.config import Config, Download

COLUMNS = ["url", "class", "status", "reason", "path", "sha256", "width", "height", "bytes", "attempts", "elapsed_s"]
RECORDS_DIR = Path(paths.STATE) / "download"


@dataclass(slots=True)  # one per URL, so kept small
class Row:
    url: str
    cls: str
    status: str = "failed"
    reason: str = ""
    path: str = ""
    sha256: str = ""
    width: int = 0
    height: int = 0
    bytes: int = 0
    attempts: int = 0
    elapsed_s: float = 0.0


FIELDS = tuple(f.name for f in fields(Row))  # in COLUMNS' order
CONVERTERS = tuple({"int": int, "float": float, "str": str}[f.type] for f in fields(Row))  # from CSV text


def write_rows(target: Path, rows: Iterable[Row]) -> None:
    """Rows as CSV with the manifest's columns, written atomically as they come."""
    with files.atomic_path(target) as tmp, open(tmp, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        writer.writerows([getattr(r, f) for f in FIELDS] for r in rows)


def read_rows(path: Path) -> Iterator[Row]:
    """Rows written by write_rows, each column found by its name in the header."""
    with open(path, newline="") as rows:
        records = csv.reader(rows)
        header = {name: i for i, name in enumerate(next(records, COLUMNS))}
        at = [header[column] for column in COLUMNS]
        for rec in records:
            yield Row(*[convert(rec[i]) for convert, i in zip(CONVERTERS, at)])


@dataclass(frozen=True)
class Chunk:
    """URLs of one class, downloaded by one task."""

    cls: str
    urls: tuple[str, ...]

    @property
    def id(self) -> str:
        return hashlib.sha256(json.dumps([self.cls, self.urls]).encode()).hexdigest()[:24]


def limits(cfg: Download) -> web.Limits:
    return web.Limits(
        timeout_s=cfg.timeout_s, connect_timeout_s=cfg.connect_timeout_s, read_timeout_s=cfg.read_timeout_s,
        max_bytes=cfg.max_bytes, retries=cfg.retries, backoff_s=cfg.backoff_s, max_redirects=cfg.max_redirects,
        in_flight=cfg.workers, per_host=cfg.per_host, allowed_hosts=frozenset(cfg.allowed_hosts),
    )


# --- fetch, validate, store ------------------------------------------------------


class Downloader:
    """A process's HTTP client and validation threads, shared by the chunks it runs.

    The fetcher keeps `download.workers` fetches in flight on one thread; each body
    is validated and stored on one of a few validation threads (OpenCV's decoding,
    hashing and file writes let other threads run meanwhile), one per core. They
    take their work from a plain queue rather than an executor: an executor's
    future, work item and idle-thread bookkeeping per image held the interpreter
    lock for a good share of the time it spent on images.
    """

    def __init__(self, cfg: Config, workdir: Path):
        self.cfg, self.workdir = cfg, workdir
        self.fetcher = web.Fetcher(limits(cfg.download))
        self.roots = sources.local_roots(cfg.data, workdir)
        self.placeholders = frozenset(cfg.download.placeholder_digests)
        self.work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._validate, name=f"validate_{i}", daemon=True)
                        for i in range(min(8, os.cpu_count() or 1))]
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self.fetcher.close()  # first: what it had not finished reaches the validation threads as an error
        for _ in self.threads:
            self.work.put(None)
        for thread in self.threads:
            thread.join()

    def _validate(self) -> None:
        while (job := self.work.get()) is not None:
            job()

    def rows(self, cls: str, urls: Sequence[str], on_url: Callable[[], None] | None = None) -> list[Row]:
        """Fetch, validate and store one class's URLs: their rows, in order, once every one has its outcome."""
        rows: list[Row | BaseException | None] = [None] * len(urls)
        left, lock, finished = len(urls), threading.Lock(), threading.Event()

        def store(i: int, url: str, got: Callable[[], web.Fetched]) -> None:  # on a validation thread
            nonlocal left
            try:
                rows[i] = self.store(url, cls, got())
                if on_url:
                    on_url()
            except BaseException as exc:  # raised to the caller below; the count goes on
                rows[i] = exc
            with lock:
                left -= 1
                if not left:
                    finished.set()

        for i, url in enumerate(urls):
            if url.startswith("file:"):
                self.work.put(functools.partial(store, i, url, functools.partial(self.read_local, url)))
            else:
                self.fetcher.submit(url).add_done_callback(
                    lambda fetched, i=i, url=url: self.work.put(functools.partial(store, i, url, fetched.result)))
        if urls:
            finished.wait()
        if errors := [row for row in rows if isinstance(row, BaseException)]:
            raise errors[0]
        return rows

    def read_local(self, entry: str) -> web.Fetched:
        """A local source's file, read only from the folders the params name."""
        try:
            path = sources.local_path(entry, self.workdir).resolve()
        except ValueError:
            return web.Fetched(b"", "invalid_url")
        if not any(path.is_relative_to(root) for root in self.roots):
            return web.Fetched(b"", "blocked_path")
        if not path.is_file():
            return web.Fetched(b"", "missing_file", 1)
        if path.stat().st_size > self.cfg.download.max_bytes:
            return web.Fetched(b"", "too_large", 1)
        return web.Fetched(path.read_bytes(), "", 1)

    def store(self, url: str, cls: str, got: web.Fetched) -> Row:
        """Validate and store one fetched body: its row."""
        cfg = self.cfg.download
        row, start = Row(url=url, cls=cls), time.monotonic()
        row.reason, row.attempts, row.bytes = got.reason, got.attempts, len(got.body)
        if got.ok:
            checked = images.check(got.body, cfg.min_side, cfg.max_pixels, self.placeholders, cfg.max_side)
            row.reason, row.sha256 = checked.reason, checked.sha256
            if not checked.reason:
                stored, ext, (row.height, row.width) = images.for_store(got.body, checked, cfg.max_side)
                row.path = f"{paths.IMAGES}/{cls}/{checked.sha256}.{ext}"
                target = os.path.join(self.workdir, row.path)
                if not os.path.isfile(target):
                    files.write_bytes(target, stored)
                row.status = "ok"
        row.elapsed_s = round(got.elapsed_s + time.monotonic() - start, 3)
        return row


_current: Downloader | None = None  # this process's downloader
_current_lock = threading.Lock()


def shared(cfg: Config, workdir: Path) -> Downloader:
    """This process's downloader for these params: its threads and connections outlive one chunk."""
    global _current
    with _current_lock:
        if _current is None or _current.cfg != cfg or _current.workdir != workdir:
            if _current is not None:
                _current.close()
            _current = Downloader(cfg, workdir)
        return _current


def exit_with_parent() -> None:
    """In a worker process: end it when the process that started it ends, even by SIGKILL.

    A worker of a killed run would otherwise live on (its task queue never
    closes) and keep downloading into the folder the next run works in.
    """
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), name="exit-with-parent", daemon=True).start()


def close_shared() -> None:
    """Stop this process's fetch and validation threads and close its connections (the step's end)."""
    global _current
    with _current_lock:
        if _current is not None:
            _current.close()
            _current = None


# --- records of finished chunks -----------------------------------------------------


class Records:
    """Finished rows, one CSV per chunk, in .alexnet/download/<settings>/.

    The folder is keyed by the settings that decide what an `ok` row stores, so a
    change of, say, `download.max_side` never reuses images stored under the old one.
    """

    def __init__(self, workdir: Path, cfg: Download):
        settings = {k: getattr(cfg, k) for k in ("min_side", "max_side", "max_pixels", "max_bytes")}
        settings["placeholders"] = sorted(cfg.placeholder_digests)
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.workdir, self.folder = workdir, workdir / RECORDS_DIR / key

    def paths(self) -> list[Path]:
        return sorted(self.folder.glob("*.csv")) if self.folder.is_dir() else []

    def start(self, ledger) -> None:
        """Begin a run: keep the `ok` rows whose image is still on disk, forget the rest.

        Failed URLs get another try in every run. The kept rows are written to one
        file before the old ones go, so a kill in here loses nothing. `ledger` (a
        `tasks.ledger.Ledger`) merges the old files; it is left empty.
        """
        if self.folder.parent.is_dir():
            for other in self.folder.parent.iterdir():
                if other != self.folder:
                    shutil.rmtree(other, ignore_errors=True)
        files.remove_stale_temps(self.folder)
        old = self.paths()
        self.load(ledger)
        write_rows(self.folder / "carried.csv",
                   (r for r in ledger.fetched("ok") if (self.workdir / r.path).is_file()))
        for path in old:
            if path.name != "carried.csv":
                path.unlink()
        ledger.forget_fetched()

    def load(self, ledger) -> None:
        """Merge the record files the ledger has not seen yet into it."""
        for path in self.paths():
            ledger.add_rows(read_rows(path), path.name)

    def write(self, chunk: Chunk, rows: list[Row]) -> None:
        write_rows(self.folder / f"{chunk.id}.csv", rows)


# --- chunks ------------------------------------------------------------------------


def download_chunk(cfg: Config, chunk: Chunk, workdir: str | Path, on_url: Callable[[], None] | None = None) -> dict:
    """Download one chunk's URLs and record its rows; a small summary for the caller."""
    workdir = Path(workdir)
    rows = shared(cfg, workdir).rows(chunk.cls, chunk.urls, on_url)
    Records(workdir, cfg.download).write(chunk, rows)
    return {"class": chunk.cls, "urls": len(rows), "ok": sum(r.status == "ok" for r in rows), "pid": os.getpid()}
