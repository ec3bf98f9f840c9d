"""prefect.yaml: `prefect deploy --all` plus a process work pool's worker runs the same flow."""

from __future__ import annotations

import pytest

from conftest import API, Service, free_port, make_project, run, task_states, tiny_params
from tasks.step import STEP_NAMES

pytestmark = pytest.mark.slow


def test_deploy_and_worker_run_the_deployment(prefect_server, tmp_path):
    (tmp_path / "project").mkdir()
    project = make_project(tmp_path / "project", tiny_params(free_port()))
    env = {**prefect_server.env, "PREFECT_HOME": str(tmp_path / "home")}
    run(["prefect", "work-pool", "create", "alexnet", "--type", "process", "--overwrite"], project, env=env)
    deployed = run(["prefect", "--no-prompt", "deploy", "--all"], project, env=env)
    assert "alexnet/full" in deployed.stdout.replace("'", "")
    deployment = API.get(f"{prefect_server.api}/deployments/name/alexnet/full", timeout=10).json()
    assert deployment["global_concurrency_limit"]["limit"] == 1  # prefect.yaml's limit: runs queue for the folder
    assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    worker = Service(["prefect", "worker", "start", "--pool", "alexnet"], project, env, tmp_path / "worker.log")
    try:
        done = run(["prefect", "deployment", "run", "alexnet/full", "--watch", "--watch-timeout", "600"], project,
                   env=env, check=False)
        output = done.stdout + done.stderr
        assert done.returncode == 0 and "Completed" in output, output + worker.output()[-4000:]
        flow_run_id = output.split("UUID: ")[1].split()[0]
        assert task_states(prefect_server.api, flow_run_id) == dict.fromkeys(STEP_NAMES, "Completed")
        assert (project / "models" / "alexnet.h5").is_file()  # ran in the project folder
    finally:
        worker.stop()
