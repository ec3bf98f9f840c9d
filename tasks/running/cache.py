"""Content-keyed step caching: the key, the record of what a run produced, the policy.

A step's cache key covers what it reads: the content of its input files, its params
sections and its code. A cache hit is honoured only while the outputs on disk are
still the ones the run behind the key produced.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy

from tasks import paths
from tasks.config import Config
from tasks.step import Step
from tasks.storage import files

STATE_DIR = Path(paths.STATE)
RESULTS_DIR = STATE_DIR / "results"  # Prefect result records, one per cache key
OUTPUTS_DIR = STATE_DIR / "outputs"  # digests of the outputs each cache key produced


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


def _outputs_record(workdir: Path, key: str) -> Path:
    return workdir / OUTPUTS_DIR / f"{key}.json"


def record_outputs(step: Step, workdir: Path, key: str) -> dict[str, str | None]:
    digests = files.digest_paths(list(step.all_outputs), workdir)
    files.write_json(_outputs_record(workdir, key), digests)
    return digests


def recorded_outputs(workdir: Path, key: str) -> dict[str, str | None] | None:
    """Digests of the outputs the run behind `key` produced, if it finished."""
    record = _outputs_record(workdir, key)
    return json.loads(record.read_text()) if record.is_file() else None


def outputs_intact(step: Step, workdir: Path, key: str) -> bool:
    expected = recorded_outputs(workdir, key)
    if expected is None:
        return False
    return all(v is not None for v in expected.values()) and expected == files.digest_paths(
        list(step.all_outputs), workdir
    )


@dataclass
class StepCache(CachePolicy):
    """Prefect cache policy: key on inputs, honour a hit only if outputs are intact."""

    step: Step | None = None

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters, **kwargs) -> str:
        workdir = Path.cwd()
        key = cache_key(self.step, inputs["cfg"], workdir)
        if not outputs_intact(self.step, workdir, key):
            # Outputs are missing or changed since the run that made this record:
            # forget the record so Prefect runs the step again.
            (workdir / RESULTS_DIR / key).unlink(missing_ok=True)
        return key
