"""Fetch, validate and store URLs, a chunk at a time, in whatever process runs the chunk.

The download step (`tasks.download`) plans the chunks and merges their records;
this module is what a chunk needs, and nothing heavier (no Prefect, no pandas),
so that worker processes start fast. Each process keeps one `Downloader` (its
fetch thread, connections and validation threads) for all the chunks it runs.

A chunk stores the images it keeps as one shard (`tasks.storage.shards`), in list order,
written atomically under a name drawn from its URLs, and then records its rows
in one CSV under .alexnet/download/, so a run killed at any moment resumes where
it stopped and never sees a partial shard.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from tasks import paths
from tasks.acquire import archives, images, sources, web
from tasks.config import Config, Download
from tasks.storage import files, in_place, shards

COLUMNS = ["url", "class", "source_subset", "status", "reason", "shard", "member", "offset", "size", "sha256",
           "width", "height", "bytes", "attempts", "elapsed_s"]
RECORDS_DIR = Path(paths.STATE) / "download"


@dataclass(slots=True)  # one per URL, so kept small
class Row:
    url: str
    cls: str
    source_subset: str = ""  # the subset the source puts the image in (train, validation), if it says
    status: str = "failed"
    reason: str = ""
    shard: str = ""  # the shard holding the image (a path relative to the project), its member name,
    member: str = ""  # the offset of the member's data in the shard, and its size there
    offset: int = 0
    size: int = 0
    sha256: str = ""  # of the body as downloaded (an image is known by it whatever is stored)
    width: int = 0
    height: int = 0
    bytes: int = 0  # downloaded
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
    """(class, URL) pairs downloaded by one task, whose kept images make one shard."""

    entries: tuple[tuple[str, str], ...]

    @functools.cached_property
    def id(self) -> str:
        return hashlib.sha256(json.dumps(self.entries).encode()).hexdigest()[:24]

    @property
    def shard(self) -> str:
        return f"{paths.IMAGES}/{self.id}{shards.SUFFIX}"


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
        self.archives = set(sources.local_archives(cfg.data, workdir))
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

    def rows(self, entries: Sequence[tuple[str, str]], on_url: Callable[[], None] | None = None,
             spool: Spool | None = None) -> list[Row]:
        """Fetch, validate and store (class, URL) pairs: their rows, in order, once every one has its outcome.

        What each keeps goes to `spool` (dropped without one), to be written as a shard in list order.
        """
        rows: list[Row | BaseException | None] = [None] * len(entries)
        left, lock, finished = len(entries), threading.Lock(), threading.Event()

        def store(i: int, cls: str, url: str, got: Callable[[], web.Fetched]) -> None:  # on a validation thread
            nonlocal left
            try:
                rows[i], data = self.store(url, cls, got())
                if data is not None and spool is not None:
                    spool.put(i, data)
                if on_url:
                    on_url()
            except BaseException as exc:  # raised to the caller below; the count goes on
                rows[i] = exc
            with lock:
                left -= 1
                if not left:
                    finished.set()

        for i, (cls, url) in enumerate(entries):
            if url.startswith(("file:", "tar:")):
                self.work.put(functools.partial(store, i, cls, url, functools.partial(self.read_local, url)))
            else:
                self.fetcher.submit(url).add_done_callback(
                    lambda fetched, i=i, cls=cls, url=url: self.work.put(
                        functools.partial(store, i, cls, url, fetched.result)))
        if entries:
            finished.wait()
        if errors := [row for row in rows if isinstance(row, BaseException)]:
            raise errors[0]
        return rows

    def read_local(self, entry: str) -> web.Fetched:
        """A local image: a file, read only from the folders the params name, or a member of an
        archive (`tar:` entries), read only from the archives the params name."""
        try:
            member = archives.parse(entry, self.workdir)
            path = (member[0] if member else sources.local_path(entry, self.workdir)).resolve()
        except ValueError:
            return web.Fetched(b"", "invalid_url")
        if entry.startswith("tar:") and member is None:
            return web.Fetched(b"", "invalid_url")
        if not (path in self.archives if member else any(path.is_relative_to(root) for root in self.roots)):
            return web.Fetched(b"", "blocked_path")
        if not path.is_file():
            return web.Fetched(b"", "missing_file", 1)
        size = member[2] if member else path.stat().st_size
        if size > self.cfg.download.max_bytes:
            return web.Fetched(b"", "too_large", 1)
        if member is None:
            return web.Fetched(path.read_bytes(), "", 1)
        with open(path, "rb") as archive:
            data = os.pread(archive.fileno(), size, member[1])
        return web.Fetched(data, "" if len(data) == size else "truncated", 1)

    def in_place(self, entry: str) -> tuple[str, int] | None:
        """Where a local image's bytes are (the file as the index names it, and their offset in it), when the
        params keep local images in place; None for a download."""
        if self.cfg.download.local_images != "in_place" or not entry.startswith(("file:", "tar:")):
            return None
        return archives.where(entry) or (archives.location(sources.local_path(entry, self.workdir), self.workdir), 0)

    def store(self, url: str, cls: str, got: web.Fetched) -> tuple[Row, bytes | None]:
        """Validate one fetched body: its row, and the bytes to store if it is kept."""
        cfg = self.cfg.download
        row, start, stored = Row(url=url, cls=cls), time.monotonic(), None
        row.reason, row.attempts, row.bytes = got.reason, got.attempts, len(got.body)
        if got.ok:
            where = self.in_place(url)  # kept where it is as it is: no store, so no size to shrink it to
            checked = images.check(got.body, cfg.min_side, cfg.max_pixels, self.placeholders,
                                   None if where else cfg.max_side)
            row.reason, row.sha256 = checked.reason, checked.sha256
            if not checked.reason:
                if where and checked.storable_as_is:
                    (row.shard, row.offset), ext = where, images.extension(got.body)
                    row.height, row.width = checked.size
                else:  # downloaded, or to be converted to 8-bit RGB: stored in the chunk's shard
                    stored, ext, (row.height, row.width) = images.for_store(got.body, checked, cfg.max_side)
                row.member, row.size, row.status = f"{cls}/{checked.sha256}.{ext}", len(stored or got.body), "ok"
        row.elapsed_s = round(got.elapsed_s + time.monotonic() - start, 3)
        return row, stored


class Spool:
    """A chunk's kept images, parked in an anonymous temp file as they come (in any order),
    so that memory stays flat however large the chunk, until its shard is written in list order."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.file = tempfile.TemporaryFile(dir=folder)  # gone when closed, or when the process dies
        self.lock, self.end, self.at = threading.Lock(), 0, {}

    def put(self, i: int, data: bytes) -> None:
        with self.lock:
            at, self.end = self.end, self.end + len(data)
            self.at[i] = (at, len(data))
        os.pwrite(self.file.fileno(), data, at)  # each writer owns its range

    def get(self, i: int) -> bytes:
        at, size = self.at[i]
        return os.pread(self.file.fileno(), size, at)

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


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


def close_shared() -> None:
    """Stop this process's fetch and validation threads and close its connections (the step's end)."""
    global _current
    with _current_lock:
        if _current is not None:
            _current.close()
            _current = None


# --- records of finished chunks -----------------------------------------------------


def is_stored(shard: str) -> bool:
    """Is this index location one of the download's shards (rather than a source the image was kept in)?"""
    return shard.startswith(f"{paths.IMAGES}/")


class Records:
    """Finished rows, one CSV per chunk, in .alexnet/download/<settings>/.

    The folder is keyed by the settings that decide what an `ok` row stores, so a
    change of, say, `download.max_side` never reuses images stored under the old one.
    """

    def __init__(self, workdir: Path, cfg: Download):
        settings = {k: getattr(cfg, k) for k in ("min_side", "max_side", "max_pixels", "max_bytes", "local_images")}
        settings["placeholders"] = sorted(cfg.placeholder_digests)
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.workdir, self.folder = workdir, workdir / RECORDS_DIR / key

    def paths(self) -> list[Path]:
        return sorted(self.folder.glob("*.csv")) if self.folder.is_dir() else []

    def start(self, ledger, sources: dict[str, str]) -> None:
        """Begin a run: keep the `ok` rows whose image is still in its shard, forget the rest.

        Rows of images kept in place are kept while `sources` (the digests of the local
        archives and folders) are those the records were made from. Failed URLs get another
        try in every run. The kept rows are written to one file before the old ones go, so
        a kill in here loses nothing. `ledger` (a `tasks.acquire.ledger.Ledger`) merges the
        old files; it is left empty.
        """
        if self.folder.parent.is_dir():
            for other in self.folder.parent.iterdir():
                if other != self.folder:
                    shutil.rmtree(other, ignore_errors=True)
        files.remove_stale_temps(self.folder)
        self.load(ledger)
        unchanged = in_place.recorded(self.folder) == sources
        with shards.Reader() as reader:
            self.keep(r for r in ledger.fetched("ok")
                      if (unchanged if not is_stored(r.shard) else
                          reader.holds(os.path.join(self.workdir, r.shard), r.member, r.offset, r.size)))
        files.write_json(self.folder / in_place.RECORD, sources)  # after the rows it vouches for are kept
        ledger.forget_fetched()

    def keep(self, rows: Iterable[Row]) -> None:
        """Make `rows` the only record: written to one file before the others go, so a kill loses nothing."""
        old = self.paths()
        write_rows(self.folder / "carried.csv", rows)
        for path in old:
            if path.name != "carried.csv":
                path.unlink()

    def load(self, ledger) -> None:
        """Merge the record files the ledger has not seen yet into it."""
        for path in self.paths():
            ledger.add_rows(read_rows(path), path.name)

    def write(self, chunk: Chunk, rows: list[Row]) -> None:
        write_rows(self.folder / f"{chunk.id}.csv", rows)


# --- chunks ------------------------------------------------------------------------


def write_shard(workdir: Path, chunk: Chunk, rows: list[Row], spool: Spool) -> None:
    """The chunk's kept images as its shard, in list order (an image kept twice is stored once)."""
    kept = [(i, row) for i, row in enumerate(rows) if row.status == "ok" and not row.shard]  # not kept in place
    if not kept:
        return
    offsets: dict[str, int] = {}
    with shards.writing(workdir / chunk.shard) as shard:
        for i, row in kept:
            if row.member not in offsets:
                offsets[row.member] = shard.add(row.member, spool.get(i))
            row.shard, row.offset = chunk.shard, offsets[row.member]


def download_chunk(cfg: Config, chunk: Chunk, workdir: str | Path, on_url: Callable[[], None] | None = None) -> dict:
    """Download one chunk's URLs, store its shard and record its rows; a small summary for the caller."""
    workdir = Path(workdir)
    records = Records(workdir, cfg.download)
    with Spool(records.folder) as spool:
        rows = shared(cfg, workdir).rows(chunk.entries, on_url, spool)
        write_shard(workdir, chunk, rows, spool)
    records.write(chunk, rows)
    return {"items": len(rows), "ok": sum(r.status == "ok" for r in rows), "pid": os.getpid()}
