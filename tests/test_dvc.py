"""dvc.yaml is the same pipeline as the flow, and `dvc repro` runs it for real."""

from __future__ import annotations

import sys

import pytest
import yaml

from conftest import REPO, make_project, run, tiny_params
from tasks.step import STEP_NAMES, load_step

DVC = [sys.executable, "-m", "dvc"]


def _names(entries) -> list[str]:
    return sorted(next(iter(e)) if isinstance(e, dict) else e for e in entries or [])


@pytest.mark.parametrize("name", STEP_NAMES)
def test_dvc_stage_declares_what_the_step_reads_and_writes(name):
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][name]
    step = load_step(name).STEP
    code = [p.relative_to(REPO).as_posix() for p in step.code_files()]
    assert stage["cmd"] == f"alexnet stage {name}"
    assert _names(stage["deps"]) == sorted([*step.deps, *code]), "dvc.yaml deps != data deps + code closure"
    assert _names(stage["params"]) == sorted(step.params)
    assert _names(stage.get("outs")) == sorted(step.outs)
    assert _names(stage.get("metrics")) == sorted(step.metrics)
    assert _names(stage.get("plots")) == sorted(step.plots)
    persist = [name for entry in stage.get("outs") or [] if isinstance(entry, dict)
               for name, options in entry.items() if options.get("persist")]
    assert sorted(persist) == sorted(step.persist), "dvc.yaml persist != Step.persist"


def test_dvc_stages_are_the_six_steps_in_order():
    assert tuple(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]) == STEP_NAMES


@pytest.mark.slow
def test_dvc_repro_runs_six_stages_then_nothing(tmp_path, port):
    project = make_project(tmp_path, tiny_params(port))
    first = run([*DVC, "repro"], project)
    ran = [line for line in first.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == [f"Running stage '{name}':" for name in STEP_NAMES]
    for output in ("models/alexnet.h5", "metrics/eval.json", "plots/confusion.png", "data/manifest.csv"):
        assert (project / output).is_file()
    second = run([*DVC, "repro"], project)
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date." in second.stdout
    assert run([*DVC, "status"], project).stdout.strip() == "Data and pipelines are up to date."
    # Outputs are git-ignored, so git sees only dvc.lock.
    assert run(["git", "status", "--porcelain"], project).stdout.split() == ["??", "dvc.lock"]
    metrics = run([*DVC, "metrics", "show", "--json"], project).stdout
    assert '"accuracy"' in metrics
