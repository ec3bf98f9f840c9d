"""Where chunks of a step's work run: threads of this process, local processes, or a Dask cluster.

`download` and `augment` cut their work into chunks (a chunk makes one shard) and
hand them to a runner chosen in params (`task_runner`: thread, process or dask).
In a Prefect run each chunk is a Prefect task on the matching Prefect task runner;
outside one (`alexnet stage`, DVC) threads and processes work the same way without
Prefect, and a Dask setting falls back to threads. Chunks are drawn only as earlier
ones finish, so a plan of millions of images is never held as chunks all at once.

Nothing heavy is imported here (Prefect only when a runner starts), so the worker
processes that run chunks start fast.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tasks.config import Runner

Chunks = Callable[[Iterable[Any]], Iterator[dict]]


def processes(cfg: Runner) -> int:
    return cfg.processes or os.cpu_count() or 1


def executors(cfg: Runner) -> int:
    """How many processes (or Dask workers) run chunks at once."""
    return {"thread": 1, "process": processes(cfg), "dask": cfg.dask_workers}[cfg.task_runner]


def exit_with_parent() -> None:
    """In a worker process: end it when the process that started it ends, even by SIGKILL.

    A worker of a killed run would otherwise live on (its task queue never
    closes) and keep writing into the folder the next run works in.
    """
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), name="exit-with-parent", daemon=True).start()


def _task_runner(cfg: Runner, threads: int):
    """The Prefect task runner for `task_runner`."""
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
        return ProcessPoolTaskRunner(max_workers=processes(cfg), initializer=exit_with_parent)
    return ThreadPoolTaskRunner(max_workers=threads)


class Sealed:
    """A task parameter Prefect passes on as it is. Prefect walks a task's parameters looking for
    futures to wait for: about 45 ms for a chunk of 1,250 images and as much for a config of 1,000
    classes, per task, as long as a chunk's own work. A plain object is not walked; it pickles with its
    value, so every task runner carries it."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


def chunk_task(work: Callable[..., dict], name: str):
    """`work(cfg, chunk, workdir)` as the Prefect task `name` that chunk_runner submits (sealed parameters)."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    def run(cfg: Sealed, chunk: Sealed, workdir: str) -> dict:
        return work(cfg.value, chunk.value, workdir)

    run.__name__ = run.__qualname__ = name
    return task(run, name=name, cache_policy=NO_CACHE, persist_result=False)


def bounded(submit: Callable[[Any], object], chunks: Iterable[Any], limit: int) -> Iterator[dict]:
    """Each chunk's summary, in order, with at most `limit` chunks submitted and unfinished."""
    futures: deque = deque()
    for chunk in chunks:
        futures.append(submit(chunk))
        if len(futures) >= limit:
            yield futures.popleft().result()
    while futures:
        yield futures.popleft().result()


@contextlib.contextmanager
def chunk_runner(settings: Runner, work: Callable[..., dict], prefect_task, cfg: Any, workdir: Path,
                 in_flight: int, progress: Callable[[int], None]) -> Iterator[Chunks]:
    """A function that runs chunks and yields their summaries, in order.

    `work(cfg, chunk, workdir, on_item=None)` does one chunk; in this process it is
    given `progress` to call per item it finishes, elsewhere its summary's `items`
    are counted when it ends. `prefect_task` is `chunk_task(work, ...)` (chunks in a
    Prefect run); `in_flight` chunks run at once per process.
    """
    from prefect.context import TaskRunContext

    limit = in_flight * executors(settings)

    def counted(submit: Callable[[Any], object]) -> Chunks:
        def run_chunks(chunks: Iterable[Any]) -> Iterator[dict]:
            for done in bounded(submit, chunks, limit):
                progress(done["items"])
                yield done

        return run_chunks

    if TaskRunContext.get() is not None:
        with _task_runner(settings, in_flight) as runner:
            yield counted(lambda c: runner.submit(prefect_task, {"cfg": Sealed(cfg), "chunk": Sealed(c),
                                                                 "workdir": str(workdir)}))
    elif settings.task_runner == "process":
        # Spawned, not forked: this process has threads running.
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(processes(settings), mp_context=spawn, initializer=exit_with_parent) as pool:
            yield counted(lambda c: pool.submit(work, cfg, c, workdir))
    else:  # chunks in this process count each item as it finishes
        with ThreadPoolExecutor(in_flight, thread_name_prefix="chunk") as pool:
            yield lambda chunks: bounded(lambda c: pool.submit(work, cfg, c, workdir, progress), chunks, limit)
