"""One writer per project folder: the lock runs take, what a waiting run says, and its deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from tasks.errors import StepError
from tasks.running import lock

HOLD = """
import sys, time
from pathlib import Path
from tasks.running import lock
with lock.held(Path(sys.argv[1]), "alexnet stage train", timeout_s=0):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def holding(folder: Path, seconds: float) -> subprocess.Popen:
    """Another process that holds the folder's lock for `seconds`, once it has printed 'held'."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], cwd=REPO,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_waits_says_so_once_and_goes_on(tmp_path):
    other = holding(tmp_path, 2.0)
    said, start = [], time.monotonic()
    with lock.held(tmp_path, "flow run 'second'", timeout_s=60, say=said.append):
        waited = time.monotonic() - start
    other.wait()
    assert waited > 1.5  # the other process had the folder for 2 s
    assert len(said) == 2, said
    assert said[0].startswith(f"waiting for alexnet stage train (pid {other.pid} on ")
    assert "has finished; going on" in said[1]


def test_the_holder_is_recorded_for_whoever_waits(tmp_path):
    with lock.held(tmp_path, "flow run 'first' (1234)", timeout_s=0):
        assert lock.holder(tmp_path).startswith(f"flow run 'first' (1234) (pid {os.getpid()} on ")
    assert lock.holder(tmp_path / "elsewhere") == "another run"


def test_the_wait_has_a_deadline_and_a_clear_message(tmp_path):
    other = holding(tmp_path, 30)
    try:
        start = time.monotonic()
        with pytest.raises(StepError, match=r"gave up after 1 s waiting for alexnet stage train .*"
                                            r"raise run.lock_timeout_s"):
            with lock.held(tmp_path, "flow run 'second'", timeout_s=1, say=lambda _: None):
                pytest.fail("entered a folder another run holds")
        assert 1.0 <= time.monotonic() - start < 10
        assert other.poll() is None and "alexnet stage train" in lock.holder(tmp_path)  # the holder untouched
    finally:
        other.kill()
        other.wait()


def test_a_holder_killed_with_sigkill_leaves_nothing_that_blocks(tmp_path):
    other = holding(tmp_path, 60)
    os.kill(other.pid, signal.SIGKILL)
    other.wait()
    said = []
    with lock.held(tmp_path, "flow run 'next'", timeout_s=0, say=said.append):
        assert said == []
        assert lock.holder(tmp_path).startswith("flow run 'next'")


def test_alexnet_stage_waits_for_the_folder(tmp_path):
    """`alexnet stage` (what dvc repro runs) takes the lock: with run.lock_timeout_s=0 it gives up at once."""
    other = holding(tmp_path, 60)
    try:
        (tmp_path / "params.yaml").write_text("run:\n  lock_timeout_s: 0\n")
        done = subprocess.run(["alexnet", "stage", "split"], cwd=tmp_path, text=True, capture_output=True,
                              timeout=120)
        assert done.returncode == 1
        assert "waiting for alexnet stage train" in done.stdout
        assert "gave up after 0 s" in done.stderr and "Traceback" not in done.stderr
    finally:
        other.kill()
        other.wait()
