"""What a command shows in the terminal: the run's own lines, warnings and errors, no start-up chatter.

Log records reach the terminal through one handler on the root logger (Prefect
then leaves the console to it): every warning and error, but of the informational
lines only those of flow and task runs and of this project; and no tracebacks
unless asked for (`alexnet --debug`), as a person's mistake ends the command with
one line saying what to fix. Prefect's own handler still sends every record,
traceback included, to the run's logs on the server.

TensorFlow writes its start-up lines from C++ straight to file descriptor 2, most
of them before its logging reads `TF_CPP_MIN_LOG_LEVEL`, so they are filtered there
while it loads and looks for GPUs: informational lines go, warnings and errors stay
(but for CUDA's failed start on a machine without CUDA drivers, which TensorFlow
has just reported as using the CPU).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

SHOWN = ("prefect.flow_runs", "prefect.task_runs", "tasks.", "flows.")  # loggers whose informational lines show
NOT_RUN = "Finished in state NotReady("
NATIVE_INFO = re.compile(r"^(I\d{4} |\d{4}-\d\d-\d\d [\d:.]+: I |WARNING: All log messages before absl::)")
NO_DRIVER = "Could not find cuda drivers"
CUINIT_FAILED = "failed call to cuInit"


class _Console(logging.Formatter):
    def __init__(self, tracebacks: bool):
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        # A copy: other handlers still get the traceback and the logger's name.
        run = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        hidden = {"exc_info": None, "exc_text": None} if record.exc_info and not self.tracebacks else {}
        if run or hidden:
            record = logging.makeLogRecord({**record.__dict__, "name": run or record.name, **hidden})
        return super().format(record)


def _shown(record: logging.LogRecord) -> bool:
    if record.getMessage().startswith(NOT_RUN):  # the steps after a failed one: the failure says it all
        return False
    return record.levelno >= logging.WARNING or record.name.startswith(SHOWN)


def setup(debug: bool = False) -> None:
    """The terminal's log handler, and the environment of a quiet, private run."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # a file it cannot read is reported by the caller
    # The temporary Prefect server a run starts sends no usage statistics unless the user asks for them,
    # and may take its time on a busy machine.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    handler = logging.StreamHandler()
    handler.setFormatter(_Console(tracebacks=debug))
    if not debug:
        handler.addFilter(_shown)
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


@contextlib.contextmanager
def tensorflow_start_up() -> Iterator[None]:
    """Around imports that may load TensorFlow: its start-up lines filtered out of stderr, devices found."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # read when TensorFlow loads: not its informational lines
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
            if "tensorflow" in sys.modules:  # CUDA starts, or fails to, on the first look for devices
                sys.modules["tensorflow"].config.list_physical_devices("GPU")
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            no_driver = any(NO_DRIVER in line for line in lines)
            sys.stderr.writelines(line for line in lines if not (
                NATIVE_INFO.match(line) or (no_driver and CUINIT_FAILED in line)))
            sys.stderr.flush()
