"""The shape every step shares: its declaration, and the registry of the six.

A step is a plain function `run(cfg, workdir) -> summary` over files. `Step` declares
what it reads (files, params sections, its code) and writes; dvc.yaml declares the
same (a test keeps the two equal). A step owns its outputs: it replaces them
atomically, reusing what it can and removing what it no longer lists, so DVC leaves
them in place (`persist: true`) and a step that stops keeps the last ones. The Prefect task over a step, with its
content-keyed cache, is `tasks.running.task`.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks import paths
from tasks.config import Config
from tasks.errors import StepError  # noqa: F401 (the steps import it from here)

PACKAGE = "tasks"
STEP_NAMES = ("fetch_urls", "download", "split", "augment", "train", "evaluate")

Summary = dict[str, Any]


@dataclass(frozen=True)
class Step:
    name: str
    params: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    # Steps that reach the network retry its failures.
    network: bool = False
    # Outputs DVC keeps out of its cache (small reports a user reads in git diffs).
    metrics: tuple[str, ...] = field(default=())
    plots: tuple[str, ...] = field(default=())
    # Files and folders named in params that the step also reads (local image
    # sources): their content is part of the cache key, like `deps`.
    inputs: Callable[[Config, Path], list[Path]] | None = None

    @property
    def module(self) -> str:
        return f"{PACKAGE}.{self.name}"

    @property
    def all_outputs(self) -> tuple[str, ...]:
        return self.outs + self.metrics + self.plots

    @property
    def record(self) -> str:
        """The record of the run that made the outputs (`tasks.running.cache`), itself a DVC output."""
        return f"{paths.SUMMARIES}/{self.name}.json"

    def code_files(self) -> list[Path]:
        return code_closure(self.module)


def load_step(name: str):
    """The step module `tasks.<name>`, imported on demand (TensorFlow is slow to import)."""
    if name not in STEP_NAMES:
        raise KeyError(f"unknown step {name!r}; steps are: {', '.join(STEP_NAMES)}")
    return importlib.import_module(f"{PACKAGE}.{name}")


def _module_file(module: str) -> Path | None:
    """The module's file; None for a package (its __init__ holds only a docstring)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(module)
    return None if spec.submodule_search_locations is not None else Path(spec.origin)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def code_closure(module: str) -> list[Path]:
    """The files of `module` and of the project modules it imports at module level, transitively."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = path = _module_file(name)
        if path is None:
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if base == PACKAGE or base.startswith(PACKAGE + "."):
                    # `from tasks.storage import files` names a module; `from tasks.config import Config` does not
                    subs = [f"{base}.{alias.name}" for alias in node.names]
                    todo += [sub for sub in subs if _is_module(sub)] or [base]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith(PACKAGE + ".")]
    return sorted(path for path in seen.values() if path is not None)


