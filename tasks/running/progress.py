"""Progress that shows where the user is looking: a terminal bar, and in a Prefect
run a progress artifact on the run's page, updated as the work goes."""

from __future__ import annotations

import logging
import threading
import time

from tqdm import tqdm

log = logging.getLogger(__name__)
UPDATE_EVERY_S = 2.0  # the UI needs no more; each update is an API call


def _in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


class Progress:
    """`with Progress("download", total=n, unit="url") as p: p.update()`; thread-safe."""

    def __init__(self, key: str, total: int, unit: str = "item", description: str = "", bar: bool = True):
        self.total, self.done, self.lock = max(total, 1), 0, threading.Lock()
        self.bar = tqdm(total=total, desc=key, unit=unit, disable=None if bar else True)
        self.description = description or f"{key}: {{done}} of {{total}} {unit}s"
        self.artifact_id, self.last = None, 0.0
        if _in_prefect_run():
            from prefect.artifacts import create_progress_artifact

            try:
                self.artifact_id = create_progress_artifact(0.0, key=f"{key}-progress", description=self._text())
            except Exception as exc:  # the UI is a nicety: never fail the work for it
                log.warning("no progress artifact: %s", exc)

    def _text(self) -> str:
        return self.description.format(done=self.done, total=self.total)

    def update(self, n: int = 1, force: bool = False) -> None:
        with self.lock:
            self.done += n
            self.bar.update(n)
            now = time.monotonic()
            if self.artifact_id is None or not (force or now - self.last >= UPDATE_EVERY_S):
                return
            self.last = now
        from prefect.artifacts import update_progress_artifact

        try:
            update_progress_artifact(self.artifact_id, 100.0 * min(self.done, self.total) / self.total,
                                     description=self._text())
        except Exception as exc:
            log.warning("progress artifact not updated: %s", exc)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.update(0, force=True)
        self.bar.close()
