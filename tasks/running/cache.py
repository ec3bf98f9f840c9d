"""Content-keyed step caching, one cache for both front doors (the flow and `dvc repro`).

A step's cache key covers what it reads: the content of its input files, its params
sections and its code. Every run of a step, whichever door started it, leaves a
record among its outputs (`summaries/<step>.json`): the key, the digests of the
outputs it made, its summary and when it ran. DVC versions, pushes and pulls that
record with the outputs, so a step whose record holds the current key and whose
outputs are still the ones recorded is a cache hit on any machine: after a flow
run, after `dvc repro`, after `dvc pull`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from tasks import paths
from tasks.config import Config
from tasks.step import Step, Summary
from tasks.storage import files

STATE_DIR = Path(paths.STATE)
RESULTS_DIR = STATE_DIR / "results"  # Prefect result records, one per cache key


def cache_key(step: Step, cfg: Config, workdir: Path) -> str:
    """Digest of everything the step reads: input files, params sections, code."""
    with files.Digests(workdir) as digests:
        material = {
            "step": step.name,
            "params": {name: cfg.section(name) for name in step.params},
            "code": {p.name: files.sha256_file(p) for p in step.code_files()},
            "deps": {path: digests.path(workdir / path) for path in step.deps},
            "inputs": {str(p): digests.path(p) for p in (step.inputs(cfg, workdir) if step.inputs else [])},
        }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def write_record(step: Step, workdir: Path, key: str, summary: Summary, ran_by: str) -> Summary:
    """Record the run that just made the step's outputs; returns its summary, with when and by whom."""
    summary = {**summary, "ran_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "ran_by": ran_by}
    outputs = files.digest_paths(list(step.all_outputs), workdir)
    files.write_json(workdir / step.record, {"cache_key": key, "outputs": outputs, "summary": summary})
    return summary


def read_record(step: Step, workdir: Path) -> dict | None:
    """The record of the run that made the step's outputs; None if there is none (or it is unreadable)."""
    try:
        record = files.read_json(workdir / step.record)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"cache_key", "outputs", "summary"} <= record.keys() else None


def intact_record(step: Step, workdir: Path, key: str) -> dict | None:
    """The record, if the outputs on disk are what a run with this key made (so the step need not run)."""
    record = read_record(step, workdir)
    if record is None or record["cache_key"] != key:
        return None
    expected = record["outputs"]
    intact = all(v is not None for v in expected.values()) and expected == files.digest_paths(
        list(step.all_outputs), workdir)
    return record if intact else None


def missing_outputs(step: Step, workdir: Path) -> list[str]:
    return [out for out in (*step.all_outputs, step.record) if not (workdir / out).exists()]
