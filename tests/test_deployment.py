"""The flow as users run it: `alexnet serve` + `prefect deployment run alexnet/full` on a real server."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from datetime import datetime

import pytest
import requests

from conftest import API, AUTH_STRING, Service, chunk_states, make_project, run, task_states, tiny_params
from tasks.step import STEP_NAMES

pytestmark = pytest.mark.slow
# Headless, and nothing reaching out: no background networking, updates or sync.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def served(prefect_server, tmp_path_factory):
    """A project whose deployment alexnet/full is served against the test server."""
    from conftest import free_port

    project = make_project(tmp_path_factory.mktemp("project"), tiny_params(free_port(), dvc={"push": True}))
    run([sys.executable, "-m", "dvc", "remote", "add", "--default", "store", str(project.parent / "store")], project)
    # The runner looks for runs every second (not 10): runs triggered together are seen while both are due.
    env = {**prefect_server.env, "PREFECT_HOME": str(project / ".prefect-home"), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    serve = Service(["alexnet", "serve"], project, env, project.parent / "serve.log")

    def registered() -> bool:
        return API.get(f"{prefect_server.api}/deployments/name/alexnet/full", timeout=5).ok

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


def test_deployment_run_completes_with_one_task_per_step_and_dvc_in_sync(served):
    flow_run_id, _ = deployment_run(served)
    flow_run = API.get(f"{served.api}/flow_runs/{flow_run_id}", timeout=10).json()
    assert flow_run["state"]["type"] == "COMPLETED"
    assert flow_run["parameters"] == {}  # the defaults: params.yaml, no overrides
    assert task_states(served.api, flow_run_id) == {name: "Completed" for name in STEP_NAMES}
    for name in ("download_chunk", "augment_chunk"):  # download and augment ran as chunk tasks
        chunks = chunk_states(served.api, flow_run_id, name)
        assert chunks and set(chunks) == {"Completed"}, name
    assert (served.project / "models" / "alexnet.h5").is_file()
    status = run([sys.executable, "-m", "dvc", "status"], served.project)
    assert status.stdout.strip() == "Data and pipelines are up to date."
    # dvc.push is on: the remote holds everything the run committed.
    cloud = run([sys.executable, "-m", "dvc", "status", "--cloud"], served.project).stdout
    assert "in sync" in cloud and "new:" not in cloud


def test_rerun_is_all_cached_and_a_train_param_reruns_only_train_and_evaluate(served):
    first_model = (served.project / "models" / "alexnet.h5").read_bytes()
    flow_run_id, _ = deployment_run(served)
    assert task_states(served.api, flow_run_id) == {name: "Cached" for name in STEP_NAMES}
    assert chunk_states(served.api, flow_run_id) == []  # a cached download fetches nothing
    assert (served.project / "models" / "alexnet.h5").read_bytes() == first_model

    flow_run_id, output = deployment_run(served, 'overrides=["train.epochs=1"]')
    upstream = dict.fromkeys(("fetch_urls", "download", "split", "augment"), "Cached")
    assert task_states(served.api, flow_run_id) == {**upstream, "train": "Completed", "evaluate": "Completed"}
    history = (served.project / "metrics" / "history.csv").read_text().splitlines()
    assert len(history) == 2  # header + the one epoch asked for
    # Runs with overrides leave DVC honest: train and evaluate show as changed.
    status = run([sys.executable, "-m", "dvc", "status"], served.project).stdout
    assert "train:" in status and "evaluate:" in status and "split:" not in status


def test_the_server_answers_401_without_the_auth_string(served):
    query = {"limit": 1}
    assert requests.post(f"{served.api}/flow_runs/filter", json=query, timeout=10).status_code == 401
    wrong = (AUTH_STRING.split(":")[0], "not-the-password")
    assert requests.post(f"{served.api}/flow_runs/filter", json=query, auth=wrong, timeout=10).status_code == 401
    assert API.post(f"{served.api}/flow_runs/filter", json=query, timeout=10).status_code == 200
    # ...and so does the CLI without it, rather than acting on the server.
    env = {k: v for k, v in served.env.items() if k != "PREFECT_API_AUTH_STRING"}
    refused = run(["prefect", "deployment", "run", "alexnet/full"], served.project, env=env, check=False)
    assert refused.returncode != 0 and "401" in refused.stdout + refused.stderr


def flow_run(api: str, flow_run_id: str) -> dict:
    return API.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()


def at(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


def test_runs_triggered_together_are_queued_by_the_concurrency_limit(served):
    deployment = API.get(f"{served.api}/deployments/name/alexnet/full", timeout=10).json()
    assert deployment["global_concurrency_limit"]["limit"] == 1
    assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    ids = []
    # Epochs other than each other's, the last test's (1) and params.yaml's (2): both runs train (the first one
    # lasts while the second is due), and so does the next test's run.
    for epochs in (3, 4):
        done = run(["prefect", "deployment", "run", "alexnet/full", "-p", f'overrides=["train.epochs={epochs}"]'],
                   served.project, env=served.env)
        ids.append(re.search(r"UUID: ([0-9a-f-]{36})", done.stdout).group(1))
    deadline = time.monotonic() + 600
    while not all(flow_run(served.api, i)["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED") for i in ids):
        assert time.monotonic() < deadline, served.output()[-4000:]
        time.sleep(1)
    first, second = sorted((flow_run(served.api, i) for i in ids), key=lambda r: at(r["start_time"]))
    assert [first["state"]["name"], second["state"]["name"]] == ["Completed", "Completed"], served.output()[-4000:]
    assert at(second["start_time"]) >= at(first["end_time"])  # held...
    states = API.get(f"{served.api}/flow_run_states/", params={"flow_run_id": second["id"]}, timeout=10).json()
    assert "AwaitingConcurrencySlot" in [s["name"] for s in states]  # ...until the first ended, by the limit
    assert task_states(served.api, second["id"])["train"] == "Completed"


def test_deployment_parameters_have_descriptions(served):
    deployment = API.get(f"{served.api}/deployments/name/alexnet/full", timeout=10).json()
    properties = deployment["parameter_openapi_schema"]["properties"]
    assert set(properties) == {"params_file", "overrides"}
    assert "params file" in properties["params_file"]["description"]
    assert "dvc exp run -S" in properties["overrides"]["description"]
    assert properties["params_file"]["default"] == "params.yaml"


def test_prefect_ui_shows_the_run_its_steps_and_metrics(served, tmp_path):
    """Headless Chromium opens the flow run's page in the real server's UI."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("needs Debian's chromium package (/usr/bin/chromium)")
    flow_run_id, _ = deployment_run(served)
    ui = served.api.removesuffix("/api")
    shot = tmp_path / "flow-run.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            try:
                page.goto(ui)  # the server asks for its auth string, as a team's server does
                page.get_by_placeholder("admin:pass").fill(AUTH_STRING)
                page.get_by_role("button", name="Login").click()
                page.wait_for_url(lambda url: "login" not in url, timeout=30_000)
                page.goto(f"{ui}/runs/flow-run/{flow_run_id}")
                page.get_by_text("Completed").first.wait_for(timeout=60_000)
                page.get_by_text("Task Runs", exact=True).first.click()
                for name in STEP_NAMES:  # the task-run list links each run, named <step>-<suffix>
                    page.get_by_role("link", name=re.compile(rf"^{name}-\w+$")).first.wait_for(timeout=30_000)
                page.screenshot(path=str(shot), full_page=True)
                page.get_by_text("Artifacts", exact=True).first.click()
                for key in ("metrics", "images-per-class", "alexnet-run-summary", "train-progress"):
                    page.get_by_text(key, exact=True).first.wait_for(timeout=30_000)
                page.screenshot(path=str(tmp_path / "artifacts.png"), full_page=True)
                page.get_by_text("metrics", exact=True).first.click()
                page.get_by_text("accuracy", exact=True).first.wait_for(timeout=30_000)
            except Exception:
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                raise
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    print(f"screenshots: {shot} and {tmp_path / 'artifacts.png'}")
