"""The shape every step shares: its declaration, its cache key and its Prefect task.

A step is a plain function `run(cfg, workdir) -> summary` over files. `Step` declares
what it reads (files and params sections) and writes; dvc.yaml declares the same
(a test keeps the two equal). The Prefect task keys its cache on the content of
what the step reads, its params sections and its code, and a cache hit is honoured
only while the outputs on disk are still the ones that run produced.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CachePolicy
from prefect.tasks import exponential_backoff

from tasks import files, paths
from tasks.config import Config
from tasks.errors import StepError  # noqa: F401 (the steps import it from here)

PACKAGE = "tasks"
STEP_NAMES = ("fetch_urls", "download", "split", "augment", "train", "evaluate")
STATE_DIR = Path(paths.STATE)
RESULTS_DIR = STATE_DIR / "results"  # Prefect result records, one per cache key
OUTPUTS_DIR = STATE_DIR / "outputs"  # digests of the outputs each cache key produced

log = logging.getLogger(__name__)

Summary = dict[str, Any]


@dataclass(frozen=True)
class Step:
    name: str
    params: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    # Steps that reach the network get retries and the embedded demo mirror.
    network: bool = False
    # Outputs DVC keeps out of its cache (small reports a user reads in git diffs).
    metrics: tuple[str, ...] = field(default=())
    plots: tuple[str, ...] = field(default=())
    # Outputs the step updates in place (it resumes from them and removes what it no
    # longer lists): DVC must not delete them before the stage runs (`persist: true`).
    persist: tuple[str, ...] = field(default=())
    # Files and folders named in params that the step also reads (local image
    # sources): their content is part of the cache key, like `deps`.
    inputs: Callable[[Config, Path], list[Path]] | None = None

    @property
    def module(self) -> str:
        return f"{PACKAGE}.{self.name}"

    @property
    def all_outputs(self) -> tuple[str, ...]:
        return self.outs + self.metrics + self.plots

    def code_files(self) -> list[Path]:
        # A network step's output also depends on the embedded mirror it may start.
        extra = [f"{PACKAGE}.mirror"] if self.network else []
        return sorted(set().union(*(code_closure(m) for m in [self.module, *extra])))


def load_step(name: str):
    """The step module `tasks.<name>`, imported on demand (TensorFlow is slow to import)."""
    if name not in STEP_NAMES:
        raise KeyError(f"unknown step {name!r}; steps are: {', '.join(STEP_NAMES)}")
    return importlib.import_module(f"{PACKAGE}.{name}")


def _module_file(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(module)
    return Path(spec.origin)


def code_closure(module: str) -> list[Path]:
    """The files of `module` and of the project modules it imports at module level, transitively."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        seen[name] = path
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if base == PACKAGE:  # `from tasks import files`
                    todo += [f"{PACKAGE}.{alias.name}" for alias in node.names]
                elif base.startswith(PACKAGE + "."):
                    todo.append(base)
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith(PACKAGE + ".")]
    return sorted(path for name, path in seen.items() if name != PACKAGE)


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


def execute(step: Step, run: Callable[[Config, Path], Summary], cfg: Config, workdir: Path) -> Summary:
    """Run a step the same way from Prefect, the CLI and DVC; the summary gets its wall time."""
    from tasks import mirror  # only network steps need it

    start = time.monotonic()
    with mirror.serving_if_needed(cfg.data) if step.network else contextlib.nullcontext():
        summary = run(cfg, workdir)
    return {**summary, "seconds": round(time.monotonic() - start, 2)}


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
        log_prints=True,
    )
