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
Planning and the merge are queries over an on-disk ledger (`tasks.ledger`), so
the step's memory does not grow with the number of URLs.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import math
import multiprocessing
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import downloader, files, paths, sources
from tasks.config import Config, Download
from tasks.downloader import Chunk, Records, download_chunk, write_rows
from tasks.ledger import Ledger
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


def executors(cfg: Download) -> int:
    """How many processes (or Dask workers) run chunks at once."""
    return {"thread": 1, "process": processes(cfg), "dask": cfg.dask_workers}[cfg.task_runner]


def bounded(submit: Callable[[Chunk], object], chunks: Iterable[Chunk], limit: int) -> Iterator[dict]:
    """Each chunk's summary, in order, with at most `limit` chunks submitted and unfinished.

    Chunks are drawn from `chunks` only as earlier ones finish, so a list of
    millions of URLs is never held as chunks all at once.
    """
    futures: deque = deque()
    for chunk in chunks:
        futures.append(submit(chunk))
        if len(futures) >= limit:
            yield futures.popleft().result()
    while futures:
        yield futures.popleft().result()


@contextlib.contextmanager
def chunk_runner(cfg: Config, workdir: Path,
                 progress: Progress) -> Iterator[Callable[[Iterable[Chunk]], Iterator[dict]]]:
    """A function that runs chunks and yields their summaries.

    Inside a Prefect run chunks are Prefect tasks on the configured task runner;
    outside one, the same chunk function runs on threads or on spawned processes.
    """
    from prefect.context import TaskRunContext

    # Enough chunks at once that a chunk's slowest URL never leaves the threads idle.
    in_flight = max(2, 2 * math.ceil(cfg.download.workers / cfg.download.chunk_size))
    limit = in_flight * executors(cfg.download)

    def counted(submit: Callable[[Chunk], object]) -> Callable[[Iterable[Chunk]], Iterator[dict]]:
        """Runs chunks elsewhere, counting each one's URLs on the progress bar as it finishes."""

        def run_chunks(chunks: Iterable[Chunk]) -> Iterator[dict]:
            for done in bounded(submit, chunks, limit):
                progress.update(done["urls"])
                yield done

        return run_chunks

    if TaskRunContext.get() is not None:
        with _task_runner(cfg.download, in_flight) as runner:
            yield counted(lambda c: runner.submit(download_chunk_task,
                                                  {"cfg": cfg, "chunk": c, "workdir": str(workdir)}))
    elif cfg.download.task_runner == "process":
        # Spawned, not forked: this process has threads running. Each worker process
        # keeps its own downloader (tasks.downloader imports nothing heavy, so they start fast).
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(processes(cfg.download), mp_context=spawn,
                                 initializer=downloader.exit_with_parent) as pool:
            yield counted(lambda c: pool.submit(download_chunk, cfg, c, workdir))
    else:  # chunks in this process count each URL as it finishes
        with ThreadPoolExecutor(in_flight, thread_name_prefix="chunk") as pool:
            yield lambda chunks: bounded(lambda c: pool.submit(download_chunk, cfg, c, workdir, progress.update),
                                         chunks, limit)


# --- plan -------------------------------------------------------------------------


def first_window(n: int, cap: int | None) -> int:
    return n if cap is None else min(n, math.ceil(cap * 1.25) + 4)


def grown_window(window: int, kept: int, cap: int, n: int) -> int:
    """Enough more URLs to reach the cap at the yield seen so far."""
    rate = max(kept / window, 0.05)
    return min(n, window + math.ceil((cap - kept) / rate * 1.1) + 4)


def plan(ledger: Ledger, cap: int | None) -> dict[str, int]:
    """Each class's window: grown for short classes until some URL in one is unfetched, or none can grow."""
    sizes = ledger.sizes()
    windows = {cls: first_window(n, cap) for cls, n in sizes.items()}
    while True:
        ledger.set_windows(windows)
        if cap is None or ledger.has_pending():
            return windows
        kept = ledger.kept(cap)
        grown = {cls: grown_window(windows[cls], kept.get(cls, 0), cap, n) for cls, n in sizes.items()
                 if kept.get(cls, 0) < cap and windows[cls] < n}
        if not grown:
            return windows
        windows.update(grown)


def chunks_of(pending: Iterable[tuple[str, str]], size: int) -> Iterator[Chunk]:
    """Runs of `size` URLs of one class, in list order."""
    for cls, group in itertools.groupby(pending, key=lambda pair: pair[0]):
        urls = (url for _, url in group)
        while batch := tuple(itertools.islice(urls, size)):
            yield Chunk(cls, batch)


def fingerprint(pending: Iterable[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for cls, url in pending:
        digest.update(f"{cls}\0{url}\n".encode())
    return digest.hexdigest()


# --- the step -----------------------------------------------------------------------------


def url_list(workdir: Path, cls: str) -> Iterator[str]:
    with open(workdir / paths.URLS / f"{cls}.txt", encoding="utf-8") as lines:
        yield from (line.strip() for line in lines if line.strip())


def remove_unlisted(workdir: Path, listed: Callable[[str], bool]) -> None:
    """Images not in this run's manifest (an old class, a lowered cap, a duplicate) are removed.

    Folders are read as streams (os.scandir), since a class can hold millions of images.
    """

    def prune(folder: str, relative: str) -> None:  # relative: the folder as the manifest writes paths
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    prune(entry.path, f"{relative}/{entry.name}")
                    with contextlib.suppress(OSError):  # kept only if something is left in it
                        os.rmdir(entry.path)
                elif not listed(f"{relative}/{entry.name}"):
                    os.unlink(entry.path)

    if (workdir / paths.IMAGES).is_dir():
        prune(str(workdir / paths.IMAGES), paths.IMAGES)


def outcome_table(counts: Iterable[tuple[str, str, int]]) -> pd.DataFrame:
    """URLs per class and outcome (`ok`, or the reason a URL gave no image)."""
    series = pd.Series({(cls, outcome): n for cls, outcome, n in counts}, dtype=int)
    table = series.unstack(fill_value=0) if len(series) else pd.DataFrame()
    return table.rename_axis(index="class", columns="outcome").sort_index(axis=1)


@contextlib.contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
    """Leave the objects alive now (imports, a flow's state) out of garbage collections for a while.

    Each URL allocates futures and rows, so collections run often, and every so often a
    full one walks all of the process's objects (about 170,000 with Prefect and pandas
    loaded: some 60 ms holding the interpreter lock, which stalls fetching and validation).
    Frozen, those objects are skipped; they are collectable again afterwards.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run(cfg: Config, workdir: Path) -> Summary:
    """Download, validate and store the images of every class; write the manifest."""
    for cls in cfg.data.classes:
        if not (path := workdir / paths.URLS / f"{cls}.txt").is_file():
            raise StepError(f"missing URL list {path}: run the fetch_urls step first")
    files.remove_stale_temps(workdir / paths.IMAGES)
    records = Records(workdir, cfg.download)
    cap = cfg.data.images_per_class
    with Ledger(records.folder / "ledger.sqlite") as ledger, long_lived_objects_frozen():
        for cls in cfg.data.classes:
            ledger.add_list(cls, url_list(workdir, cls))
        records.start(ledger)
        total = sum(ledger.sizes().values())
        with Progress("download", total, unit="url") as bar:
            try:
                with chunk_runner(cfg, workdir, bar) as run_chunks:
                    before = ""  # the last round's pending URLs (a digest: the list can be long)
                    pids: set[int] = set()  # the processes that downloaded
                    while True:
                        records.load(ledger)
                        windows = plan(ledger, cap)
                        if not ledger.has_pending():
                            break
                        if (last := fingerprint(ledger.pending())) == before:
                            raise StepError(f"chunks finished but left no records in {records.folder}: "
                                            "do all task runner workers see this folder?")
                        before = last
                        chunks = chunks_of(ledger.pending(), cfg.download.chunk_size)
                        pids |= {done["pid"] for done in run_chunks(chunks)}
            finally:
                downloader.close_shared()  # chunks run in this process shared its threads and connections
            bar.update(total - sum(windows.values()))  # URLs never needed
        ledger.save_manifest(cap)
        write_rows(workdir / paths.MANIFEST, ledger.manifest())
        remove_unlisted(workdir, ledger.lists)
        counts = ledger.outcomes()

    table = outcome_table((cls, outcome, n) for cls, _, outcome, n in counts)
    print(f"download: URLs per class and outcome\n{table.to_string()}")
    per_status = Counter()
    for cls, status, _, n in counts:
        per_status[(cls, status)] += n
    ok = {cls: per_status[(cls, "ok")] for cls in cfg.data.classes if per_status[(cls, "ok")]}
    short = {cls: ok.get(cls, 0) for cls in cfg.data.classes if ok.get(cls, 0) < cfg.download.min_images_per_class}
    if short:
        raise StepError(
            f"too few good images: {short} (download.min_images_per_class="
            f"{cfg.download.min_images_per_class}); reasons per URL are in {paths.MANIFEST}"
        )
    return {
        "step": STEP.name,
        "ok": ok,
        "failed": {cls: n for (cls, status), n in per_status.items() if status == "failed"},
        "processes": len(pids),
        "outcomes": {cls: {k: int(v) for k, v in r.items() if v} for cls, r in table.iterrows()},
    }


download_task = step_task(STEP, run)
