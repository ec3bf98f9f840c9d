"""Keep DVC in sync with runs made outside `dvc repro` (Prefect flows), and pull from its remote.

After a flow run, `dvc commit -f` records the outputs of every step whose effective
params equal what params.yaml says, so `dvc status` is clean and `dvc repro` has
nothing to do. A step run with overrides (and every step after it) is left
uncommitted: its outputs do not correspond to params.yaml, and DVC says so.

DVC takes a second or two to start; a run whose steps all stand for what the last
commit recorded (same cache keys and the same outputs, so same inputs, code and
results) while DVC's files are untouched since then has nothing to commit, and
skips it.

A flow that would run a step whose outputs are missing first pulls them from the
DVC remote, as `dvc repro --pull` does (`pull`); the step's record then says
whether they are what this run needs.
"""

from __future__ import annotations

import configparser
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from tasks.config import Config
from tasks.params import PARAMS_FILE, ConfigError, load_config
from tasks.running.cache import STATE_DIR, read_record
from tasks.step import STEP_NAMES, StepError, load_step
from tasks.storage import files

SYNCED = STATE_DIR / "dvc-synced.json"  # what the last commit (and push) recorded
DVC_BUSY = "Unable to acquire lock"  # DVC's words when another dvc process has the repository

log = logging.getLogger(__name__)


def is_dvc_repo(workdir: Path) -> bool:
    return (workdir / ".dvc").is_dir() and (workdir / "dvc.yaml").is_file()


def steps_matching_params_file(cfg: Config, workdir: Path) -> list[str]:
    """Leading steps whose params sections equal those of params.yaml."""
    try:
        recorded = load_config(workdir / PARAMS_FILE)
    except ConfigError:
        return []
    matching = []
    for name in STEP_NAMES:
        step = load_step(name).STEP
        if any(cfg.section(s) != recorded.section(s) for s in step.params):
            break
        matching.append(name)
    return matching


def dvc(*args: str, workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=workdir, capture_output=True, text=True)


def dvc_message(done: subprocess.CompletedProcess) -> str:
    """What DVC said about a failure: its error lines (it writes them to either stream), or all it printed."""
    said = (done.stderr + done.stdout).strip()
    errors = [line for line in said.splitlines() if line.startswith("ERROR")]
    return "\n".join(errors) or said or f"exit status {done.returncode}, nothing printed"


def can_pull(workdir: Path) -> bool:
    """Whether DVC has a pipeline record and a remote to pull from (read from its config, without starting DVC)."""
    if not is_dvc_repo(workdir) or not (workdir / "dvc.lock").is_file():
        return False
    config = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        config.read([workdir / ".dvc" / "config", workdir / ".dvc" / "config.local"])
    except configparser.Error:
        return False
    return any(section.strip("'\"").startswith("remote ") for section in config.sections())


def pull(stage: str, workdir: Path) -> str:
    """`dvc pull <stage>`: the outputs dvc.lock records for it, from the remote; returns DVC's message on failure."""
    done = dvc("pull", stage, workdir=workdir)
    return "" if done.returncode == 0 else dvc_message(done)


def _state(workdir: Path, stages: list[str], pushed: bool) -> dict:
    """What a commit records: each step's record (its key and outputs), DVC's own files, the push."""
    steps = {s: read_record(load_step(s).STEP, workdir) for s in stages}
    dvc_files = files.digest_paths(["dvc.yaml", "dvc.lock", PARAMS_FILE], workdir)
    return {"steps": steps, "files": dvc_files, "pushed": pushed}


def commit(cfg: Config, workdir: Path, keys: dict[str, str] | None = None) -> dict:
    """Record this run's outputs in DVC; returns what was committed and what was not.

    `keys` are the steps' cache keys in this run; with them, a run that changes
    nothing DVC has recorded skips the commit.
    """
    if not is_dvc_repo(workdir):
        return {"committed": [], "note": "not a DVC repository; nothing committed"}
    stages = steps_matching_params_file(cfg, workdir)
    skipped = [s for s in STEP_NAMES if s not in stages]
    note = ""
    if skipped:
        note = (f"{', '.join(skipped)} ran with params that differ from {PARAMS_FILE}; "
                "left uncommitted, so `dvc status` shows them as changed")
        log.warning(note)
    synced = workdir / SYNCED
    if keys and synced.is_file() and json.loads(synced.read_text()) == _state(workdir, stages, cfg.dvc.push):
        return {"committed": [], "pushed": [], "note": note or "already in sync with this run's outputs"}
    start = time.monotonic()
    # Only what DVC does not already record: committing an unchanged output would touch its file.
    changed = []
    if stages:
        done = dvc("status", "--json", *stages, workdir=workdir)
        try:
            reported = {name.rsplit(":", 1)[-1] for name in json.loads(done.stdout or "{}")}
        except ValueError:
            reported = set(stages)
        # A failed status commits everything: the commit then says why, or finds DVC busy.
        changed = [s for s in stages if s in reported] if done.returncode == 0 else stages
    if changed:
        done = dvc("commit", "--force", *changed, workdir=workdir)
        if done.returncode != 0 and DVC_BUSY in done.stderr + done.stdout:
            # Not waiting: a `dvc repro` holding DVC's lock may be waiting for this run's lock to be released.
            busy = ("DVC is busy (another dvc command, such as `dvc repro`, has this repository): nothing "
                    "committed; `dvc repro` records the stages it runs, or run `dvc commit` once it is done")
            log.warning(busy)
            return {"committed": [], "pushed": [], "note": busy}
        if done.returncode != 0:
            raise StepError(f"dvc commit failed: {dvc_message(done)}")
    elif stages and not note:
        note = "DVC already records this run's outputs"
    pushed = []
    if stages and cfg.dvc.push:
        remote = ["--remote", cfg.dvc.remote] if cfg.dvc.remote else []
        done = dvc("push", *remote, *stages, workdir=workdir)
        if done.returncode != 0:
            raise StepError(f"dvc push failed: {dvc_message(done)}")
        pushed = stages
    if keys:
        files.write_json(synced, _state(workdir, stages, cfg.dvc.push))
    return {"committed": changed, "pushed": pushed, "note": note, "seconds": round(time.monotonic() - start, 2)}
