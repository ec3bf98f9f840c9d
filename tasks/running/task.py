"""A step as a Prefect task: named after it, cached by content, retried if it uses the network
(network failures only: a person's mistake or a full disk is not retried)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import CachePolicy
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from tasks.config import Config
from tasks.errors import retryable
from tasks.running.cache import RESULTS_DIR, cache_key, intact_record, missing_outputs, write_record
from tasks.step import Step, Summary


def execute(step: Step, run: Callable[[Config, Path], Summary], cfg: Config, workdir: Path, ran_by: str) -> Summary:
    """Run a step the same way from Prefect, the CLI and DVC, and record the run among its outputs.

    The summary gets its wall time, when and by whom it ran, and its cache key.
    """
    key = cache_key(step, cfg, workdir)
    start = time.monotonic()
    summary = run(cfg, workdir)
    summary = write_record(step, workdir, key, {**summary, "seconds": round(time.monotonic() - start, 2)}, ran_by)
    return {**summary, "cache_key": key}


def _worth_retrying(task, task_run, state) -> bool:
    return retryable(state.result(raise_on_failure=False))


@dataclass
class StepCache(CachePolicy):
    """Prefect cache policy: key on inputs; a hit is a step whose recorded run had this key and whose
    outputs are still the ones it made, whichever door ran it and on whichever machine.

    Missing outputs are first pulled from the DVC remote, as `dvc repro --pull` does. The
    recorded summary becomes the Prefect result of the key, so the task run shows as Cached
    with what the step said when it ran.
    """

    step: Step | None = None

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters, **kwargs) -> str:
        # Imported here: pulling does not change what a step makes, so versioning stays out of its code key.
        from tasks.running import versioning

        workdir, say = Path.cwd(), get_run_logger().info
        key = cache_key(self.step, inputs["cfg"], workdir)
        record = intact_record(self.step, workdir, key)
        missing = [] if record else missing_outputs(self.step, workdir)
        if missing and versioning.can_pull(workdir):
            say(f"{self.step.name}: {len(missing)} output(s) missing ({', '.join(missing[:3])}); "
                "pulling them from the DVC remote")
            said = versioning.pull(self.step.name, workdir)
            record = intact_record(self.step, workdir, key)
            say(f"{self.step.name}: pulled from the DVC remote" if record else
                f"{self.step.name}: not fetched ({said or 'the remote holds outputs of other inputs'}); running it")
        if record:
            summary = record["summary"]
            task_ctx.result_store.write(obj={**summary, "cache_key": key}, key=key)
            say(f"{self.step.name}: cached; its outputs are those of the run by {summary.get('ran_by')} "
                f"at {summary.get('ran_at')}")
        else:
            # No run made these outputs with these inputs: forget any result under this key.
            (workdir / RESULTS_DIR / key).unlink(missing_ok=True)
        return key


def step_task(step: Step, run: Callable[[Config, Path], Summary]):
    """The Prefect task over `run`, named after the step, with content-keyed caching."""

    def body(cfg: Config) -> Summary:
        return execute(step, run, cfg, Path.cwd(), f"flow run {flow_run.name!r}")

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
