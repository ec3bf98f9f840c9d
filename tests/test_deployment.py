"""The flow as users run it: `alexnet serve` + `prefect deployment run alexnet/full` on a real server."""

from __future__ import annotations

import re
import sys

import pytest
import requests

from conftest import Service, make_project, run, tiny_params
from tasks.step import STEP_NAMES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(prefect_server, tmp_path_factory):
    """A project whose deployment alexnet/full is served against the test server."""
    from conftest import free_port

    project = make_project(tmp_path_factory.mktemp("project"), tiny_params(free_port()))
    env = {**prefect_server.env, "PREFECT_HOME": str(project / ".prefect-home")}
    serve = Service(["alexnet", "serve"], project, env, project.parent / "serve.log")

    def registered() -> bool:
        return requests.get(f"{prefect_server.api}/deployments/name/alexnet/full", timeout=5).ok

    try:
        serve.wait_until(registered, 180, "alexnet serve")
        serve.project, serve.env, serve.api = project, env, prefect_server.api
        yield serve
    finally:
        serve.stop()  # before the server, or it hangs


def deployment_run(served, *params: str) -> tuple[str, str]:
    args = ["prefect", "deployment", "run", "alexnet/full", "--watch", "--watch-timeout", "600"]
    for p in params:
        args += ["-p", p]
    done = run(args, served.project, env=served.env, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output + served.output()[-4000:]
    assert "Completed" in output
    return re.search(r"UUID: ([0-9a-f-]{36})", output).group(1), output


def task_states(served, flow_run_id: str) -> tuple[dict[str, str], list[str]]:
    """The state of each step's task (each runs once), and those of the download_chunk tasks."""
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "sort": "EXPECTED_START_TIME_ASC"}
    runs = requests.post(f"{served.api}/task_runs/filter", json=body, timeout=10).json()
    states, chunks = {}, []
    for task_run in runs:
        name = task_run["name"].rsplit("-", 1)[0]
        if name == "download_chunk":
            chunks.append(task_run["state"]["name"])
            continue
        assert name not in states
        states[name] = task_run["state"]["name"]
    return states, chunks


def test_deployment_run_completes_with_one_task_per_step_and_dvc_in_sync(served):
    flow_run_id, _ = deployment_run(served)
    flow_run = requests.get(f"{served.api}/flow_runs/{flow_run_id}", timeout=10).json()
    assert flow_run["state"]["type"] == "COMPLETED"
    assert flow_run["parameters"] == {}  # the defaults: params.yaml, no overrides
    states, chunks = task_states(served, flow_run_id)
    assert states == {name: "Completed" for name in STEP_NAMES}
    assert chunks and set(chunks) == {"Completed"}  # the download ran as download_chunk tasks
    assert (served.project / "models" / "alexnet.h5").is_file()
    status = run([sys.executable, "-m", "dvc", "status"], served.project)
    assert status.stdout.strip() == "Data and pipelines are up to date."


def test_rerun_is_all_cached_and_a_train_param_reruns_only_train_and_evaluate(served):
    first_model = (served.project / "models" / "alexnet.h5").read_bytes()
    flow_run_id, _ = deployment_run(served)
    assert task_states(served, flow_run_id) == ({name: "Cached" for name in STEP_NAMES}, [])
    assert (served.project / "models" / "alexnet.h5").read_bytes() == first_model

    flow_run_id, output = deployment_run(served, 'overrides=["train.epochs=1"]')
    upstream = dict.fromkeys(("fetch_urls", "download", "split", "augment"), "Cached")
    assert task_states(served, flow_run_id) == ({**upstream, "train": "Completed", "evaluate": "Completed"}, [])
    history = (served.project / "metrics" / "history.csv").read_text().splitlines()
    assert len(history) == 2  # header + the one epoch asked for
    # Runs with overrides leave DVC honest: train and evaluate show as changed.
    status = run([sys.executable, "-m", "dvc", "status"], served.project).stdout
    assert "train:" in status and "evaluate:" in status and "split:" not in status
