"""download: fetch every listed URL, keep the ones that decode as images.

Reader (URL lists) -> plan (which URLs, in chunks) -> fetcher (`tasks.web`:
bounded, streamed, retried, address-checked) -> validator (`tasks.images`) ->
writer (content-digest names) -> merge (caps, duplicates, label conflicts) ->
manifest (one row per class and URL, with a reason for every URL that gave no
image). Individual failures never fail the step; a class left with too few good
images does.

Work is cut into chunks. Each chunk records its finished rows in one file,
written atomically under .alexnet/download/, and images are written atomically
under their digest, so a run killed at any moment resumes where it stopped. In a
Prefect run each chunk is a `download_chunk` task on the configured task runner
(threads, or a Dask cluster); outside one (`alexnet stage download`, DVC) the same
chunk function runs in this process.

Only the first `data.images_per_class` good images of a class (in list order) are
kept, so URLs are planned in growing windows from the top of each list until
every class has enough or its list runs out; the windows depend only on the
outcomes, never on timing, so a resumed run plans what an uninterrupted one did.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import shutil
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import files, images, paths, sources, web
from tasks.config import Config, Download
from tasks.progress import Progress
from tasks.step import STATE_DIR, Step, StepError, Summary, step_task

STEP = Step(
    name="download",
    params=("data", "download"),
    deps=(paths.URLS,),
    outs=(paths.IMAGES, paths.MANIFEST),
    network=True,
    persist=(paths.IMAGES, paths.MANIFEST),  # a killed or re-parametrised run resumes from what it has
    inputs=lambda cfg, workdir: sources.local_inputs(cfg.data, workdir),  # local images are read here
)

COLUMNS = ["url", "class", "status", "reason", "path", "sha256", "width", "height", "bytes", "attempts", "elapsed_s"]
RECORDS_DIR = STATE_DIR / "download"


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

    @classmethod
    def from_record(cls, rec: dict) -> "Row":
        rec = {**rec, "cls": rec["class"]}
        kinds = {f.name: f.type for f in fields(cls)}
        convert = {"int": int, "float": float, "str": str}
        row = cls(**{k: convert[kinds[k]](rec[k]) for k in kinds})
        row.cls, row.status, row.reason = sys.intern(row.cls), sys.intern(row.status), sys.intern(row.reason)
        return row

    @property
    def outcome(self) -> str:
        return "ok" if self.status == "ok" else self.reason


def write_rows(target: Path, rows: list[Row]) -> None:
    """Rows as CSV with the manifest's columns, written atomically."""
    with files.atomic_path(target) as tmp, open(tmp, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        writer.writerows([getattr(r, "cls" if c == "class" else c) for c in COLUMNS] for r in rows)


def read_rows(path: Path) -> Iterator[Row]:
    with open(path, newline="") as rows:
        yield from (Row.from_record(rec) for rec in csv.DictReader(rows))


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
        per_host=cfg.per_host, allowed_hosts=frozenset(cfg.allowed_hosts),
    )


# --- fetch, validate, store ------------------------------------------------------


class Downloader:
    """A process's download threads and HTTP client, shared by the chunks it runs."""

    def __init__(self, cfg: Config, workdir: Path):
        self.cfg, self.workdir = cfg, workdir
        self.fetcher = web.Fetcher(limits(cfg.download))
        self.pool = ThreadPoolExecutor(cfg.download.workers, thread_name_prefix="download")
        self.roots = sources.local_roots(cfg.data, workdir)
        self.placeholders = frozenset(cfg.download.placeholder_digests)

    def __enter__(self) -> "Downloader":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(cancel_futures=True)
        self.fetcher.close()

    def fetch(self, url: str) -> web.Fetched:
        if url.startswith("file:"):
            return self.read_local(url)
        if problem := web.url_problem(url):
            return web.Fetched(b"", problem)
        return self.fetcher.get(url)

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

    def process(self, url: str, cls: str) -> Row:
        """Fetch, validate and store one URL; every outcome is a row."""
        cfg = self.cfg.download
        row, start = Row(url=url, cls=cls), time.monotonic()
        got = self.fetch(url)
        row.reason, row.attempts, row.bytes = got.reason, got.attempts, len(got.body)
        if got.ok:
            checked = images.check(got.body, cfg.min_side, cfg.max_pixels, self.placeholders)
            row.reason, row.sha256 = checked.reason, checked.sha256
            if checked.image is not None:
                stored, ext, (row.height, row.width) = images.for_store(got.body, checked, cfg.max_side)
                row.path = f"{paths.IMAGES}/{cls}/{checked.sha256}.{ext}"
                target = self.workdir / row.path
                if not target.is_file():
                    files.write_bytes(target, stored)
                row.status = "ok"
        row.elapsed_s = round(time.monotonic() - start, 3)
        return row


_shared: Downloader | None = None  # the running step's downloader, for chunks run in its process


@contextlib.contextmanager
def _downloader(cfg: Config, workdir: Path) -> Iterator[Downloader]:
    if _shared is not None and _shared.cfg == cfg and _shared.workdir == workdir:
        yield _shared
    else:  # a chunk on another process (a Dask worker): a downloader of its own
        with Downloader(cfg, workdir) as own:
            yield own


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

    def start(self) -> None:
        """Begin a run: keep the `ok` rows whose image is still on disk, forget the rest.

        Failed URLs get another try in every run; the files are replaced atomically,
        so a kill in here loses nothing.
        """
        if self.folder.parent.is_dir():
            for other in self.folder.parent.iterdir():
                if other != self.folder:
                    shutil.rmtree(other, ignore_errors=True)
        files.remove_stale_temps(self.folder)
        old = sorted(self.folder.glob("*.csv")) if self.folder.is_dir() else []
        keep = [r for r in self.read().values() if r.status == "ok" and (self.workdir / r.path).is_file()]
        if keep:
            write_rows(self.folder / "carried.csv", keep)
        for path in old:
            if path.name != "carried.csv" or not keep:
                path.unlink()

    def read(self) -> dict[tuple[str, str], Row]:
        known: dict[tuple[str, str], Row] = {}
        for path in sorted(self.folder.glob("*.csv")) if self.folder.is_dir() else []:
            for row in read_rows(path):
                if (row.cls, row.url) not in known or row.status == "ok":
                    known[(row.cls, row.url)] = row
        return known

    def write(self, chunk: Chunk, rows: list[Row]) -> None:
        write_rows(self.folder / f"{chunk.id}.csv", rows)


# --- chunks ------------------------------------------------------------------------


def download_chunk(cfg: Config, chunk: Chunk, workdir: str | Path, on_url: Callable[[], None] | None = None) -> dict:
    """Download one chunk's URLs and record its rows; a small summary for the caller."""
    workdir = Path(workdir)
    rows = []
    with _downloader(cfg, workdir) as downloader:
        for future in [downloader.pool.submit(downloader.process, url, chunk.cls) for url in chunk.urls]:
            rows.append(future.result())
            if on_url:
                on_url()
    Records(workdir, cfg.download).write(chunk, rows)
    return {"class": chunk.cls, "urls": len(rows), "ok": sum(r.status == "ok" for r in rows)}


download_chunk_task = task(download_chunk, name="download_chunk", cache_policy=NO_CACHE, persist_result=False)


def _task_runner(cfg: Download, in_flight: int):
    if cfg.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if cfg.dask_address:
            return DaskTaskRunner(address=cfg.dask_address)
        from prefect.client.orchestration import get_client

        # Local workers report to this run's API, even a temporary one, rather than
        # each starting a temporary server of its own.
        env = {"PREFECT_API_URL": str(get_client(sync_client=True).api_url).rstrip("/")}
        return DaskTaskRunner(cluster_kwargs={
            "n_workers": cfg.dask_workers, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0",
            "env": env})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=in_flight)


@contextlib.contextmanager
def chunk_runner(cfg: Config, workdir: Path, progress: Progress) -> Iterator[Callable[[list[Chunk]], None]]:
    """A function that runs chunks: as Prefect tasks inside a Prefect run, else in this process."""
    from prefect.context import TaskRunContext

    # Enough chunks at once that a chunk's slowest URL never leaves the threads idle.
    in_flight = max(2, 2 * math.ceil(cfg.download.workers / cfg.download.chunk_size))
    if TaskRunContext.get() is None:
        with ThreadPoolExecutor(in_flight, thread_name_prefix="chunk") as pool:
            yield lambda chunks: list(pool.map(lambda c: download_chunk(cfg, c, workdir, progress.update), chunks))
        return
    with _task_runner(cfg.download, in_flight) as runner:

        def run_chunks(chunks: list[Chunk]) -> None:
            params = [{"cfg": cfg, "chunk": c, "workdir": str(workdir)} for c in chunks]
            for future in [runner.submit(download_chunk_task, p) for p in params]:
                progress.update(future.result()["urls"])

        yield run_chunks


# --- plan and merge -------------------------------------------------------------------


def first_window(n: int, cap: int | None) -> int:
    return n if cap is None else min(n, math.ceil(cap * 1.25) + 4)


def grown_window(window: int, kept: int, cap: int, n: int) -> int:
    """Enough more URLs to reach the cap at the yield seen so far."""
    rate = max(kept / window, 0.05)
    return min(n, window + math.ceil((cap - kept) / rate * 1.1) + 4)


def resolve(lists: dict[str, list[str]], known: dict, windows: dict[str, int], cap: int | None):
    """The manifest's rows and the images kept per class, from the fetched rows.

    In list order per class: an image under two classes is a label conflict (kept in
    neither), a repeat within a class is a duplicate (kept once), and past the cap
    an image is skipped; URLs beyond the window were never needed.
    """
    owners: dict[str, set[str]] = defaultdict(set)
    for cls, urls in lists.items():
        for url in urls[: windows[cls]]:
            row = known[(cls, url)]
            if row.status == "ok":
                owners[row.sha256].add(cls)
    rows, kept = [], {}
    for cls, urls in lists.items():
        seen: set[str] = set()
        for url in urls[: windows[cls]]:
            row = replace(known[(cls, url)])
            if row.status == "ok":
                if len(owners[row.sha256]) > 1:
                    row.status, row.reason, row.path = "failed", "label_conflict", ""
                elif row.sha256 in seen:
                    row.status, row.reason, row.path = "skipped", "duplicate", ""
                elif cap is not None and len(seen) >= cap:
                    row.status, row.reason, row.path = "skipped", "enough_images", ""
                else:
                    seen.add(row.sha256)
            rows.append(row)
        rows += [Row(url=u, cls=cls, status="skipped", reason="enough_images") for u in urls[windows[cls]:]]
        kept[cls] = len(seen)
    return rows, kept


def plan(lists: dict[str, list[str]], known: dict, cap: int | None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(windows, URLs still to fetch): grow each short class's window until all are fetched."""
    windows = {cls: first_window(len(urls), cap) for cls, urls in lists.items()}
    while True:
        pending = [(c, u) for c, urls in lists.items() for u in urls[: windows[c]] if (c, u) not in known]
        if pending:
            return windows, pending
        _, kept = resolve(lists, known, windows, cap)
        grown = {c: grown_window(windows[c], kept[c], cap, len(urls)) for c, urls in lists.items()
                 if cap is not None and kept[c] < cap and windows[c] < len(urls)}
        if not grown:
            return windows, []
        windows.update(grown)


def chunks_of(pending: list[tuple[str, str]], size: int) -> list[Chunk]:
    by_class: dict[str, list[str]] = defaultdict(list)
    for cls, url in pending:
        by_class[cls].append(url)
    return [Chunk(cls, tuple(urls[i : i + size])) for cls, urls in by_class.items() for i in range(0, len(urls), size)]


# --- the step -----------------------------------------------------------------------------


def read_url_lists(cfg: Config, workdir: Path) -> dict[str, list[str]]:
    lists = {}
    for cls in cfg.data.classes:
        path = workdir / paths.URLS / f"{cls}.txt"
        if not path.is_file():
            raise StepError(f"missing URL list {path}: run the fetch_urls step first")
        lists[cls] = list(dict.fromkeys(line.strip() for line in path.read_text().splitlines() if line.strip()))
    return lists


def remove_unlisted(workdir: Path, keep: set[str]) -> None:
    """Images not in this run's manifest (an old class, a lowered cap, a duplicate) are removed."""
    root = workdir / paths.IMAGES
    for path in root.rglob("*"):
        if path.is_file() and path.relative_to(workdir).as_posix() not in keep:
            path.unlink()
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def counts_table(rows: list[Row]) -> pd.DataFrame:
    """URLs per class and outcome (`ok`, or the reason a URL gave no image)."""
    counts = Counter((r.cls, r.outcome) for r in rows)
    table = pd.Series(counts, dtype=int).unstack(fill_value=0) if counts else pd.DataFrame()
    return table.rename_axis(index="class", columns="outcome").sort_index(axis=1)


def run(cfg: Config, workdir: Path) -> Summary:
    """Download, validate and store the images of every class; write the manifest."""
    global _shared
    lists = read_url_lists(cfg, workdir)
    files.remove_stale_temps(workdir / paths.IMAGES)
    records = Records(workdir, cfg.download)
    records.start()
    cap = cfg.data.images_per_class
    total = sum(len(urls) for urls in lists.values())
    with Progress("download", total, unit="url") as bar, Downloader(cfg, workdir) as downloader:
        _shared = downloader  # chunks run in this process share its threads and connections
        try:
            with chunk_runner(cfg, workdir, bar) as run_chunks:
                last: list = []
                while True:
                    known = records.read()
                    windows, pending = plan(lists, known, cap)
                    if not pending:
                        break
                    if pending == last:
                        raise StepError(f"chunks finished but left no records in {records.folder}: "
                                        "do all task runner workers see this folder?")
                    run_chunks(chunks_of(pending, cfg.download.chunk_size))
                    last = pending
        finally:
            _shared = None
        bar.update(total - sum(windows.values()))  # URLs never needed
    rows, _ = resolve(lists, known, windows, cap)
    del known  # the rows are the manifest now
    remove_unlisted(workdir, {r.path for r in rows if r.status == "ok"})
    write_rows(workdir / paths.MANIFEST, rows)

    table = counts_table(rows)
    print(f"download: URLs per class and outcome\n{table.to_string()}")
    ok = Counter(r.cls for r in rows if r.status == "ok")
    short = {cls: ok.get(cls, 0) for cls in lists if ok.get(cls, 0) < cfg.download.min_images_per_class}
    if short:
        raise StepError(
            f"too few good images: {short} (download.min_images_per_class="
            f"{cfg.download.min_images_per_class}); reasons per URL are in {paths.MANIFEST}"
        )
    return {
        "step": STEP.name,
        "ok": dict(ok),
        "failed": dict(Counter(r.cls for r in rows if r.status == "failed")),
        "outcomes": {cls: {k: int(v) for k, v in r.items() if v} for cls, r in table.iterrows()},
    }


download_task = step_task(STEP, run)
