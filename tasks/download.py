"""download: fetch every listed URL, keep the ones that decode as images.

Reader (URL lists) -> plan (which URLs, in chunks) -> fetcher (`tasks.web`:
bounded, streamed, retried, address-checked) -> validator (`tasks.images`) ->
writer (content-digest names) -> merge (caps, duplicates, label conflicts) ->
manifest (one row per class and URL, with a reason for every URL that gave no
image). Individual failures never fail the step; a class left with too few good
images does.

Work is cut into chunks (`tasks.downloader` fetches, validates and stores them;
each records its rows, so a run killed at any moment resumes where it stopped).
`download.task_runner` says where chunks run: on threads of this process, on
`download.processes` local processes, or on a Dask cluster. In a Prefect run each
chunk is a `download_chunk` task on the matching Prefect task runner; outside one
(`alexnet stage download`, DVC) threads and processes work the same way without
Prefect, and a Dask setting falls back to threads.

Only the first `data.images_per_class` good images of a class (in list order) are
kept, so URLs are planned in growing windows from the top of each list until
every class has enough or its list runs out; the windows depend only on the
outcomes, never on timing, so a resumed run plans what an uninterrupted one did.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import multiprocessing
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import downloader, files, paths, sources
from tasks.config import Config, Download
from tasks.downloader import Chunk, Records, Row, download_chunk, write_rows
from tasks.progress import Progress
from tasks.step import Step, StepError, Summary, step_task

STEP = Step(
    name="download",
    params=("data", "download"),
    deps=(paths.URLS,),
    outs=(paths.IMAGES, paths.MANIFEST),
    network=True,
    persist=(paths.IMAGES, paths.MANIFEST),  # a killed or re-parametrised run resumes from what it has
    inputs=lambda cfg, workdir: sources.local_inputs(cfg.data, workdir),  # local images are read here
)

download_chunk_task = task(download_chunk, name="download_chunk", cache_policy=NO_CACHE, persist_result=False)


def _counted(summary: dict, progress: Progress) -> dict:
    progress.update(summary["urls"])
    return summary


def processes(cfg: Download) -> int:
    return cfg.processes or os.cpu_count() or 1


def _task_runner(cfg: Download, in_flight: int):
    """The Prefect task runner for `download.task_runner`."""
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
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    if cfg.task_runner == "process":
        return ProcessPoolTaskRunner(max_workers=processes(cfg), initializer=downloader.exit_with_parent)
    return ThreadPoolTaskRunner(max_workers=in_flight)


@contextlib.contextmanager
def chunk_runner(cfg: Config, workdir: Path, progress: Progress) -> Iterator[Callable[[list[Chunk]], list[dict]]]:
    """A function that runs chunks and returns their summaries.

    Inside a Prefect run chunks are Prefect tasks on the configured task runner;
    outside one, the same chunk function runs on threads or on spawned processes.
    """
    from prefect.context import TaskRunContext

    # Enough chunks at once that a chunk's slowest URL never leaves the threads idle.
    in_flight = max(2, 2 * math.ceil(cfg.download.workers / cfg.download.chunk_size))
    if TaskRunContext.get() is not None:
        with _task_runner(cfg.download, in_flight) as runner:

            def run_tasks(chunks: list[Chunk]) -> list[dict]:
                futures = [runner.submit(download_chunk_task, {"cfg": cfg, "chunk": c, "workdir": str(workdir)})
                           for c in chunks]
                return [_counted(future.result(), progress) for future in futures]

            yield run_tasks
    elif cfg.download.task_runner == "process":
        # Spawned, not forked: this process has threads running. Each worker process
        # keeps its own downloader (tasks.downloader imports nothing heavy, so they start fast).
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(processes(cfg.download), mp_context=spawn,
                                 initializer=downloader.exit_with_parent) as pool:

            def run_in_processes(chunks: list[Chunk]) -> list[dict]:
                futures = [pool.submit(download_chunk, cfg, c, workdir) for c in chunks]
                return [_counted(future.result(), progress) for future in as_completed(futures)]

            yield run_in_processes
    else:
        with ThreadPoolExecutor(in_flight, thread_name_prefix="chunk") as pool:
            yield lambda chunks: list(pool.map(lambda c: download_chunk(cfg, c, workdir, progress.update), chunks))


# --- plan and merge -------------------------------------------------------------------


def first_window(n: int, cap: int | None) -> int:
    return n if cap is None else min(n, math.ceil(cap * 1.25) + 4)


def grown_window(window: int, kept: int, cap: int, n: int) -> int:
    """Enough more URLs to reach the cap at the yield seen so far."""
    rate = max(kept / window, 0.05)
    return min(n, window + math.ceil((cap - kept) / rate * 1.1) + 4)


def resolve(lists: dict[str, list[str]], known: dict, windows: dict[str, int], cap: int | None) -> Iterator[Row]:
    """The manifest's rows, in list order, from the fetched rows (which it leaves as they are).

    Per class: an image under two classes is a label conflict (kept in neither), a
    repeat within a class is a duplicate (kept once), and past the cap an image is
    skipped; URLs beyond the window were never needed. Rows are yielded one at a
    time, so the manifest never exists twice in memory.
    """
    owner: dict[str, str] = {}  # sha256 -> the class it came under, or "" under several
    for cls, urls in lists.items():
        for url in itertools.islice(urls, windows[cls]):
            row = known[(cls, url)]
            if row.status == "ok":
                owner[row.sha256] = cls if owner.get(row.sha256, cls) == cls else ""
    for cls, urls in lists.items():
        seen: set[str] = set()
        for url in itertools.islice(urls, windows[cls]):
            row = known[(cls, url)]
            if row.status == "ok":
                if not owner[row.sha256]:
                    row = replace(row, status="failed", reason="label_conflict", path="")
                elif row.sha256 in seen:
                    row = replace(row, status="skipped", reason="duplicate", path="")
                elif cap is not None and len(seen) >= cap:
                    row = replace(row, status="skipped", reason="enough_images", path="")
                else:
                    seen.add(row.sha256)
            yield row
        for url in itertools.islice(urls, windows[cls], None):
            yield Row(url=url, cls=cls, status="skipped", reason="enough_images")


def plan(lists: dict[str, list[str]], known: dict, cap: int | None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(windows, URLs still to fetch): grow each short class's window until all are fetched."""
    windows = {cls: first_window(len(urls), cap) for cls, urls in lists.items()}
    while True:
        pending = [(c, u) for c, urls in lists.items() for u in itertools.islice(urls, windows[c])
                   if (c, u) not in known]
        if pending:
            return windows, pending
        kept = Counter(row.cls for row in resolve(lists, known, windows, cap) if row.status == "ok")
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


def fingerprint(pending: list[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for cls, url in pending:
        digest.update(f"{cls}\0{url}\n".encode())
    return digest.hexdigest()


def read_url_lists(cfg: Config, workdir: Path) -> dict[str, list[str]]:
    lists = {}
    for cls in cfg.data.classes:
        path = workdir / paths.URLS / f"{cls}.txt"
        if not path.is_file():
            raise StepError(f"missing URL list {path}: run the fetch_urls step first")
        # Interned, as are the records' URLs, so that each URL is held once.
        lines = (sys.intern(line.strip()) for line in path.read_text().splitlines() if line.strip())
        lists[cls] = list(dict.fromkeys(lines))
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


class Tally:
    """Counts of the manifest's rows as they stream past, and the images they keep."""

    def __init__(self):
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (class, `ok` or the reason)
        self.statuses: Counter[tuple[str, str]] = Counter()  # (class, status)
        self.kept: set[str] = set()  # paths of the images the manifest lists

    def __call__(self, rows: Iterable[Row]) -> Iterator[Row]:
        for row in rows:
            self.outcomes[(row.cls, row.outcome)] += 1
            self.statuses[(row.cls, row.status)] += 1
            if row.status == "ok":
                self.kept.add(row.path)
            yield row

    def per_class(self, status: str) -> dict[str, int]:
        return {cls: n for (cls, s), n in self.statuses.items() if s == status}

    def table(self) -> pd.DataFrame:
        """URLs per class and outcome (`ok`, or the reason a URL gave no image)."""
        table = pd.Series(self.outcomes, dtype=int).unstack(fill_value=0) if self.outcomes else pd.DataFrame()
        return table.rename_axis(index="class", columns="outcome").sort_index(axis=1)


def run(cfg: Config, workdir: Path) -> Summary:
    """Download, validate and store the images of every class; write the manifest."""
    lists = read_url_lists(cfg, workdir)
    files.remove_stale_temps(workdir / paths.IMAGES)
    records = Records(workdir, cfg.download)
    records.start()
    cap = cfg.data.images_per_class
    total = sum(len(urls) for urls in lists.values())
    with Progress("download", total, unit="url") as bar:
        try:
            with chunk_runner(cfg, workdir, bar) as run_chunks:
                before = ""  # the last round's pending URLs (a digest: the list can be long)
                pids: set[int] = set()  # the processes that downloaded
                while True:
                    known = None  # the last round's rows go before the new ones are read
                    known = records.read()
                    windows, pending = plan(lists, known, cap)
                    if not pending:
                        break
                    if (last := fingerprint(pending)) == before:
                        raise StepError(f"chunks finished but left no records in {records.folder}: "
                                        "do all task runner workers see this folder?")
                    before = last
                    pids |= {done["pid"] for done in run_chunks(chunks_of(pending, cfg.download.chunk_size))}
                    del pending
        finally:
            downloader.close_shared()  # chunks run in this process shared its threads and connections
        bar.update(total - sum(windows.values()))  # URLs never needed
    tally = Tally()
    write_rows(workdir / paths.MANIFEST, tally(resolve(lists, known, windows, cap)))
    del known
    remove_unlisted(workdir, tally.kept)

    table = tally.table()
    print(f"download: URLs per class and outcome\n{table.to_string()}")
    ok = tally.per_class("ok")
    short = {cls: ok.get(cls, 0) for cls in lists if ok.get(cls, 0) < cfg.download.min_images_per_class}
    if short:
        raise StepError(
            f"too few good images: {short} (download.min_images_per_class="
            f"{cfg.download.min_images_per_class}); reasons per URL are in {paths.MANIFEST}"
        )
    return {
        "step": STEP.name,
        "ok": ok,
        "failed": tally.per_class("failed"),
        "processes": len(pids),
        "outcomes": {cls: {k: int(v) for k, v in r.items() if v} for cls, r in table.iterrows()},
    }


download_task = step_task(STEP, run)
