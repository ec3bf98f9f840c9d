"""One writer per project folder: a run holds `.alexnet/lock` while it writes the pipeline's outputs.

Flow runs (from the CLI, a served deployment or a worker) hold it from their first
step to their DVC commit, and `alexnet stage` (what `dvc repro` runs) for its step; a
second run waits for the first, says once whom it waits for and since when, then
goes on and finds the first run's outputs in its cache. The lock is the operating
system's (`flock`), so a holder that dies, even by SIGKILL, releases it with its
last file descriptor. Readers (`alexnet predict`, `dvc status`, the UI) never take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from tasks import paths
from tasks.errors import StepError

LOCK = Path(paths.STATE) / "lock"  # holds who has it, as JSON, for the one who waits
POLL_S = 0.5


def holder(workdir: Path) -> str:
    """Who holds (or last held) the lock, in words."""
    try:
        found = json.loads((workdir / LOCK).read_text())
        return f"{found['who']} (pid {found['pid']} on {found['host']}, since {found['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another run"


@contextlib.contextmanager
def held(workdir: Path, who: str, timeout_s: float, say: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the project folder's lock for the duration; wait up to `timeout_s` for it, saying so once."""
    path = workdir / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, waiting = time.monotonic() + timeout_s, None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waiting is None:
                    waiting = holder(workdir)
                    say(f"waiting for {waiting} to finish writing {workdir} (at most {timeout_s:g} s, "
                        "run.lock_timeout_s)")
                if time.monotonic() >= deadline:
                    raise StepError(f"gave up after {timeout_s:g} s waiting for {waiting} to finish writing "
                                    f"{workdir}: let it finish or stop it, or raise run.lock_timeout_s") from None
                time.sleep(POLL_S)
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record = json.dumps({"who": who, "pid": os.getpid(), "host": socket.gethostname(), "since": since})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        if waiting is not None:
            say(f"{waiting} has finished; going on")
        yield
    finally:
        os.close(fd)  # releases the lock, as the process's end would
