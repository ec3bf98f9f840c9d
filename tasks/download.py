"""download: fetch every listed URL, keep the ones that decode as images.

Reader (URL lists) -> plan (which URLs, in chunks) -> fetcher (`tasks.acquire.web`:
bounded, streamed, retried, address-checked) -> validator (`tasks.acquire.images`) ->
writer (a shard per chunk; images already on this disk are indexed where they are,
`download.local_images`) -> merge (caps, duplicates, label conflicts) ->
manifest (one row per class and URL, with a reason for every URL that gave no
image) and the image index (one row per kept image: where it is in which shard).
Individual failures never fail the step; a class left with too few good images does.

Work is cut into chunks (`tasks.acquire.downloader` fetches, validates and stores them as
one shard; each records its rows, so a run killed at any moment resumes where it
stopped). `download.task_runner` says where chunks run (`tasks.running.runners`); in a
Prefect run each chunk is a `download_chunk` task.

Only the first `data.images_per_class` good images of a class (in list order) are
kept, so URLs are planned in growing windows from the top of each list until
every class has enough or its list runs out; the windows depend only on the
outcomes, never on timing, so a resumed run plans what an uninterrupted one did.
Planning and the merge are queries over an on-disk ledger (`tasks.acquire.ledger`), so
the step's memory does not grow with the number of URLs.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import hashlib
import itertools
import math
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from tasks import paths
from tasks.acquire import downloader, mirror, sources
from tasks.acquire.downloader import Chunk, Records, download_chunk, write_rows
from tasks.acquire.ledger import INDEX_COLUMNS, Ledger
from tasks.config import Config
from tasks.running import report, runners
from tasks.running.progress import Progress
from tasks.running.task import step_task
from tasks.step import Step, StepError, Summary
from tasks.storage import files, in_place, shards

STEP = Step(
    name="download",
    params=("data", "download"),
    deps=(paths.URLS,),
    outs=(paths.IMAGES, paths.MANIFEST),
    network=True,
    inputs=lambda cfg, workdir: sources.local_inputs(cfg.data, workdir),  # local images are read here
)

download_chunk_task = runners.chunk_task(download_chunk, "download_chunk")


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
    for round in itertools.count():
        ledger.set_windows(windows, round)
        if cap is None or ledger.has_pending():
            return windows
        kept = ledger.kept(cap)
        grown = {cls: grown_window(windows[cls], kept.get(cls, 0), cap, n) for cls, n in sizes.items()
                 if kept.get(cls, 0) < cap and windows[cls] < n}
        if not grown:
            return windows
        windows.update(grown)


def chunks_of(pending: Iterable[tuple[str, str, int]]) -> Iterator[Chunk]:
    """The pending (class, URL) pairs of each chunk (`Ledger.pending_chunks`), in list order."""
    for _, group in itertools.groupby(pending, key=lambda row: row[2]):
        yield Chunk(tuple((cls, url) for cls, url, _ in group))


def fingerprint(pending: Iterable[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for cls, url in pending:
        digest.update(f"{cls}\0{url}\n".encode())
    return digest.hexdigest()


# --- the step -----------------------------------------------------------------------------


def url_list(workdir: Path, cls: str) -> Iterator[tuple[str, str]]:
    """A class's list: (entry, the subset its source gives it, or "") per non-empty line."""
    with open(workdir / paths.URLS / f"{cls}.txt", encoding="utf-8") as lines:
        for line in lines:
            entry, _, subset = line.strip().partition("\t")
            if entry:
                yield entry, subset if subset in sources.SUBSETS else ""


def prune(workdir: Path, ledger: Ledger) -> None:
    """Leave in data/images exactly the shards and images the manifest keeps.

    A shard holding images it does not keep (a duplicate, a label conflict, one past
    a lowered cap) is rewritten without them; shards it keeps nothing from (an old
    class, a killed run's leftovers), and anything else in the folder, are removed.
    """
    for shard in filter(downloader.is_stored, ledger.shards_to_prune()):  # never a source kept in place
        ledger.moved(shard, shards.rewrite(os.path.join(workdir, shard), ledger.kept_members(shard)))
    keep = {os.path.basename(p) for p in filter(downloader.is_stored, ledger.kept_shards())}
    keep |= {os.path.basename(p) for p in (paths.IMAGE_INDEX, paths.CLASS_NAMES)} | {in_place.RECORD}
    folder = workdir / paths.IMAGES
    for entry in os.scandir(folder) if folder.is_dir() else []:
        if entry.name not in keep:
            shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)


def write_index(target: Path, rows: Iterable[tuple]) -> None:
    """The image index: a row per kept image (digest, class, shard, member, offset, size, width, height, URL)."""
    with files.atomic_path(target) as tmp, open(tmp, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["class" if c == "cls" else c for c in INDEX_COLUMNS])
        writer.writerows(rows)


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


def kept_in_place(cfg: Config, workdir: Path) -> dict[str, str]:
    """The local archives and folders images may be kept in, with their digests (none when the params ask for
    copies)."""
    if cfg.download.local_images != "in_place":
        return {}
    return in_place.digests(sources.containers(cfg.data, workdir), workdir)


def run(cfg: Config, workdir: Path) -> Summary:
    """Download, validate and keep the images of every class (in shards, or where they are); write the index and
    the manifest."""
    for cls in cfg.data.classes:
        if not (path := workdir / paths.URLS / f"{cls}.txt").is_file():
            raise StepError(f"missing URL list {path}: run the fetch_urls step first")
    in_place.check(workdir / paths.URLS, workdir, "fetch_urls")  # the lists' archive offsets still hold
    files.remove_stale_temps(workdir / paths.IMAGES)
    records, local = Records(workdir, cfg.download), kept_in_place(cfg, workdir)
    cap = cfg.data.images_per_class
    # Enough chunks at once that a chunk's slowest URL never leaves the threads idle.
    in_flight = max(2, 2 * math.ceil(cfg.download.workers / cfg.download.chunk_size))
    with (Ledger(records.folder / "ledger.sqlite") as ledger, long_lived_objects_frozen(),
          mirror.serving_if_needed(cfg.data)):  # the demo source, when nothing else answers there
        for cls in cfg.data.classes:
            ledger.add_list(cls, url_list(workdir, cls))
        records.start(ledger, local)
        total = sum(ledger.sizes().values())
        with Progress("download", total, unit="url") as bar:
            try:
                with runners.chunk_runner(cfg.download, download_chunk, download_chunk_task, cfg, workdir,
                                          in_flight, bar.update) as run_chunks:
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
                        chunks = chunks_of(ledger.pending_chunks(cfg.download.chunk_size))
                        pids |= {done["pid"] for done in run_chunks(chunks)}
            finally:
                downloader.close_shared()  # chunks run in this process shared its threads and connections
            bar.update(total - sum(windows.values()))  # URLs never needed
        ledger.save_manifest(cap)
        prune(workdir, ledger)
        records.keep(ledger.fetched("ok"))  # as pruning left them
        write_index(workdir / paths.IMAGE_INDEX, ledger.index())
        in_place.record(workdir / paths.IMAGES, local)
        names = cfg.data.display_names()
        files.write_csv(workdir / paths.CLASS_NAMES, pd.DataFrame(
            [(key, spec.wnid or "", names[key]) for key, spec in cfg.data.classes.items()],
            columns=["class", "wnid", "name"]))
        write_rows(workdir / paths.MANIFEST, ledger.manifest())
        counts = ledger.outcomes()

    table = outcome_table((cls, outcome, n) for cls, _, outcome, n in counts)
    print("download: URLs per class and outcome\n" + report.class_table(table.to_dict(orient="index"), sort_by="ok"))
    per_status = Counter()
    for cls, status, _, n in counts:
        per_status[(cls, status)] += n
    ok = {cls: per_status[(cls, "ok")] for cls in cfg.data.classes if per_status[(cls, "ok")]}
    short = {cls: ok.get(cls, 0) for cls in cfg.data.classes if ok.get(cls, 0) < cfg.download.min_images_per_class}
    if short:
        which = str(short) if len(short) <= report.SHOWN else \
            f"{len(short)} classes, e.g. {dict(list(short.items())[:report.SHOWN])}"
        raise StepError(
            f"too few good images: {which} (download.min_images_per_class="
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
