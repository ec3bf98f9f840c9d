"""A step as a Prefect task: named after it, cached by content, retried if it uses the network
(network failures only: a person's mistake or a full disk is not retried)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from prefect import task
from prefect.tasks import exponential_backoff

from tasks.config import Config
from tasks.errors import retryable
from tasks.running.cache import RESULTS_DIR, StepCache, cache_key, record_outputs
from tasks.step import Step, Summary


def execute(step: Step, run: Callable[[Config, Path], Summary], cfg: Config, workdir: Path) -> Summary:
    """Run a step the same way from Prefect, the CLI and DVC; the summary gets its wall time."""
    start = time.monotonic()
    summary = run(cfg, workdir)
    return {**summary, "seconds": round(time.monotonic() - start, 2)}


def _worth_retrying(task, task_run, state) -> bool:
    return retryable(state.result(raise_on_failure=False))


def step_task(step: Step, run: Callable[[Config, Path], Summary]):
    """The Prefect task over `run`, named after the step, with content-keyed caching."""

    def body(cfg: Config) -> Summary:
        workdir = Path.cwd()
        key = cache_key(step, cfg, workdir)
        summary = execute(step, run, cfg, workdir)
        record_outputs(step, workdir, key)
        return {**summary, "cache_key": key}  # what this result stands for (a cache hit returns it too)

    body.__name__ = body.__qualname__ = step.name
    body.__doc__ = run.__doc__
    return task(
        body,
        name=step.name,
        cache_policy=StepCache(step=step),
        persist_result=True,
        result_storage=RESULTS_DIR,  # relative: resolved in the working directory at run time
        result_serializer="json",
        retries=2 if step.network else 0,
        retry_delay_seconds=exponential_backoff(backoff_factor=5) if step.network else 0,
        retry_condition_fn=_worth_retrying,
        log_prints=True,
    )
