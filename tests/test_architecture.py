"""The layout keeps its rule: imports only go down (steps -> wings -> storage -> contract)."""

from __future__ import annotations

import ast

import pytest
from conftest import REPO

from tasks.step import STEP_NAMES

TASKS = REPO / "tasks"
WINGS = ("acquire", "learning", "running")
CONTRACT = ("step", "config", "params", "synsets", "paths", "errors")


def place(module: str) -> tuple[int, str]:
    """(layer, room) of a `tasks` module: 3 steps, 2 a wing, 1 storage, 0 the contract."""
    parts = module.split(".")[1:]
    if parts[0] in STEP_NAMES:
        return 3, parts[0]
    if parts[0] in WINGS:
        return 2, parts[0]
    if parts[0] == "storage":
        return 1, "storage"
    assert parts[0] in CONTRACT, f"tasks.{parts[0]} is neither a step, a wing, storage nor the contract"
    return 0, parts[0]


def imported(path) -> set[str]:
    """The `tasks` modules a file imports, anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tasks":
            found |= {f"{node.module}.{a.name}" if node.module in ("tasks", *(f"tasks.{w}" for w in (*WINGS, "storage")))
                      else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "tasks"}
    return found


MODULES = sorted(p for p in TASKS.rglob("*.py") if p.name != "__init__.py")


def test_the_front_holds_only_the_six_steps_and_the_contract():
    front = {p.stem for p in TASKS.glob("*.py")} - {"__init__"}
    assert front == set(STEP_NAMES) | set(CONTRACT)
    assert {p.name for p in TASKS.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == {*WINGS, "storage"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(TASKS).as_posix())
def test_imports_only_go_down(path):
    module = ".".join(("tasks", *path.relative_to(TASKS).with_suffix("").parts))
    layer, room = place(module)
    for target in imported(path):
        their_layer, their_room = place(target)
        if their_room == room:
            continue  # within one wing (or the contract): any order, no cycles (Python would say)
        assert their_layer < layer or (layer == 0 and their_layer == 0), \
            f"{module} imports {target}: imports go down (steps -> wings -> storage -> contract)"


@pytest.mark.parametrize("wing", (*WINGS, "storage"))
def test_each_wing_says_what_it_holds_and_may_use(wing):
    doc = ast.get_docstring(ast.parse((TASKS / wing / "__init__.py").read_text()))
    assert doc and "May use" in doc
