"""One cache for both front doors: what `dvc repro` made, or `dvc pull` brought, is a cache hit for the flow.

A project (a git repository with a local DVC remote) is reproduced with `dvc repro`,
pushed, and cloned; every scenario runs the flow against a real Prefect server and
reads the task-run states from its API.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import API, Service, free_port, latest_flow_run, make_project, run, task_states, tiny_params
from tasks import paths
from tasks.step import STEP_NAMES

pytestmark = pytest.mark.slow

DVC = [sys.executable, "-m", "dvc"]
CACHED = dict.fromkeys(STEP_NAMES, "Cached")
CLEAN = "Data and pipelines are up to date."
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]


def stamp(project: Path) -> tuple[int, int]:
    """The model file's inode and modification time: unchanged unless something rewrote it."""
    st = os.stat(project / paths.MODEL)
    return st.st_ino, st.st_mtime_ns


@pytest.fixture(scope="module")
def origin(prefect_server, tmp_path_factory):
    """A project whose six stages ran with `dvc repro`, pushed to a local remote."""
    root = tmp_path_factory.mktemp("one-cache")
    project = make_project(root / "origin", tiny_params(free_port()))
    run([*DVC, "remote", "add", "--default", "store", str(root / "store")], project)
    run([*DVC, "repro"], project)
    # Published as a team does: the data pushed, dvc.lock and the remote's address committed.
    run([*DVC, "push"], project)
    run(["git", "add", "dvc.lock", ".dvc/config"], project)
    run([*GIT, "commit", "-qm", "first run"], project)
    env = {**prefect_server.env, "PYTHONPATH": str(project)}
    return project, env


def flow(project: Path, env: dict, api: str, *overrides: str) -> tuple[dict[str, str], str]:
    args = ["alexnet", "run"]
    for override in overrides:
        args += ["-S", override]
    done = run(args, project, env={**env, "PYTHONPATH": str(project)})
    return task_states(api, latest_flow_run(api)["id"]), done.stdout + done.stderr


def clone(origin: Path, target: Path) -> Path:
    run(["git", "clone", "-q", str(origin), str(target)], target.parent)
    return target


def test_what_dvc_repro_made_is_a_cache_hit_for_the_flow(origin, prefect_server):
    project, env = origin
    before = stamp(project)
    states, output = flow(project, env, prefect_server.api)
    assert states == CACHED
    assert stamp(project) == before, "the model was rewritten"
    assert run([*DVC, "status"], project).stdout.strip() == CLEAN
    # The summary says each step was cached and which run made its outputs, and when.
    assert output.count("cached: made by alexnet stage at ") == len(STEP_NAMES), output


def test_a_clone_with_the_data_pulled_reuses_every_step(origin, prefect_server, tmp_path):
    project, env = origin
    teammate = clone(project, tmp_path / "teammate")
    run([*DVC, "pull"], teammate)
    assert run([*DVC, "status"], teammate).stdout.strip() == CLEAN
    before = stamp(teammate)
    states, _ = flow(teammate, env, prefect_server.api)
    assert states == CACHED
    assert stamp(teammate) == before, "the model was rewritten"
    assert run([*DVC, "status"], teammate).stdout.strip() == CLEAN
    # Exact as before: a changed param still reruns what it changes, after work that came through DVC.
    assert flow(teammate, env, prefect_server.api, "evaluate.grid_images=3")[0] == {**CACHED, "evaluate": "Completed"}


def test_a_clone_without_the_data_pulls_it_instead_of_recomputing(origin, prefect_server, tmp_path):
    project, env = origin
    teammate = clone(project, tmp_path / "teammate")
    assert not (teammate / paths.MODEL).exists()
    states, _ = flow(teammate, env, prefect_server.api)
    assert states == CACHED
    logs = API.post(f"{prefect_server.api}/logs/filter", timeout=10, json={
        "logs": {"flow_run_id": {"any_": [latest_flow_run(prefect_server.api)["id"]]}}, "limit": 200}).json()
    said = "\n".join(entry["message"] for entry in logs)
    assert all(f"{name}: pulled from the DVC remote" in said for name in STEP_NAMES), said
    assert run([*DVC, "status"], teammate).stdout.strip() == CLEAN


def test_a_partial_remote_reruns_only_what_it_lacks(origin, prefect_server, tmp_path):
    project, env = origin
    partial = tmp_path / "partial-store"
    run([*DVC, "remote", "add", "--local", "partial", str(partial)], project)
    run([*DVC, "push", "--remote", "partial", "fetch_urls", "download", "split"], project)
    teammate = clone(project, tmp_path / "teammate")
    run([*DVC, "remote", "add", "--local", "--default", "partial", str(partial)], teammate)
    states, _ = flow(teammate, env, prefect_server.api)
    assert states == {**CACHED, "augment": "Completed", "train": "Completed", "evaluate": "Completed"}


def test_a_new_worker_with_the_data_pulled_takes_a_deployment_run_without_recomputing(origin, prefect_server,
                                                                                     tmp_path):
    project, _ = origin
    worker_clone = clone(project, tmp_path / "worker")
    run([*DVC, "pull"], worker_clone)
    before = stamp(worker_clone)
    env = {**prefect_server.env, "PREFECT_HOME": str(tmp_path / "home"), "PYTHONPATH": str(worker_clone)}
    pool = f"one-cache-{free_port()}"
    run(["prefect", "work-pool", "create", pool, "--type", "process", "--overwrite"], worker_clone, env=env)
    spec = yaml.safe_load((worker_clone / "prefect.yaml").read_text())
    spec["deployments"][0].update(name="one-cache", work_pool={"name": pool})
    (worker_clone / "prefect.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    run(["prefect", "--no-prompt", "deploy", "--all"], worker_clone, env=env)
    worker = Service(["prefect", "worker", "start", "--pool", pool], worker_clone, env, tmp_path / "worker.log")
    try:
        done = run(["prefect", "deployment", "run", "alexnet/one-cache", "--watch", "--watch-timeout", "600"],
                   worker_clone, env=env, check=False)
        output = done.stdout + done.stderr
        assert done.returncode == 0 and "Completed" in output, output + worker.output()[-4000:]
        flow_run_id = output.split("UUID: ")[1].split()[0]
        assert task_states(prefect_server.api, flow_run_id) == CACHED
    finally:
        worker.stop()
        shutil.rmtree(tmp_path / "home", ignore_errors=True)
    assert stamp(worker_clone) == before, "the model was rewritten"
