"""Prefect caching that is never wrong, read back from a real server's API.

Each scenario changes one thing in a project (a param, an output, an input, a step's
code) and runs the flow again with `alexnet run`; the task-run states say which steps
ran (`Completed`) and which were reused (`Cached`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from conftest import free_port, latest_flow_run, make_project, run, task_states, tiny_params
from tasks import paths
from tasks.params import load_config
from tasks.running import lock
from tasks.running.cache import RESULTS_DIR, cache_key
from tasks.step import STEP_NAMES, load_step

pytestmark = pytest.mark.slow

CACHED = dict.fromkeys(STEP_NAMES, "Cached")


@pytest.fixture(scope="module")
def project(prefect_server, tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("caching"), tiny_params(free_port()))
    # The project's own copy of the code runs, so a test can edit a step module.
    env = {**prefect_server.env, "PYTHONPATH": str(project)}

    def flow(*overrides: str) -> dict[str, str]:
        args = ["alexnet", "run"]
        for override in overrides:
            args += ["-S", override]
        finished = run(args, project, env=env)
        done.output = finished.stdout + finished.stderr
        return task_states(prefect_server.api, latest_flow_run(prefect_server.api)["id"])

    done = SimpleNamespace(dir=project, env=env, flow=flow, output="")
    assert flow() == dict.fromkeys(STEP_NAMES, "Completed")
    return done


def test_nothing_changed_reuses_every_step(project):
    assert project.flow() == CACHED
    # The summary says so, step by step, with the run that made the outputs and when.
    assert project.output.count("cached: made by flow run '") == len(STEP_NAMES), project.output
    # ...and DVC, which the first run committed to, has nothing new to record.
    assert "DVC: already in sync with this run's outputs" in project.output
    status = run([sys.executable, "-m", "dvc", "status"], project.dir).stdout
    assert status.strip() == "Data and pipelines are up to date."


def test_results_live_in_the_project_one_per_step_under_its_cache_key(project):
    """Before any other scenario: each step has run once, and its result is in the project, named by the key of
    what it read."""
    cfg = load_config(project.dir / "params.yaml")
    keys = {cache_key(load_step(name).STEP, cfg, project.dir) for name in STEP_NAMES}
    assert len(keys) == len(STEP_NAMES)
    assert {p.name for p in (project.dir / RESULTS_DIR).iterdir()} == keys


def test_a_train_param_reruns_train_and_evaluate_only(project):
    assert project.flow("train.epochs=1") == {**CACHED, "train": "Completed", "evaluate": "Completed"}
    assert project.flow("train.epochs=1") == CACHED
    assert project.flow() == {**CACHED, "train": "Completed", "evaluate": "Completed"}


def test_a_deleted_shard_is_downloaded_again(project):
    shard = sorted((project.dir / paths.IMAGES).glob("*.tar"))[0]
    content = shard.read_bytes()
    shard.unlink()
    # The manifest records the new fetch (attempts, elapsed_s), so split reads a changed
    # file and runs; its output is the same, so nothing after it does.
    assert project.flow() == {**CACHED, "download": "Completed", "split": "Completed"}
    assert shard.read_bytes() == content


def test_a_changed_byte_in_a_shard_reruns_the_step_that_wrote_it(project):
    shard = sorted((project.dir / paths.AUGMENTED).glob("train-*.tar"))[0]
    content = bytearray(shard.read_bytes())
    content[700] ^= 0xFF  # inside the first image, same size
    shard.write_bytes(content)
    # augment writes that shard again (its other shards are reused), as it was: train reads the same data.
    assert project.flow() == {**CACHED, "augment": "Completed"}
    assert shard.read_bytes()[700] == content[700] ^ 0xFF


def test_an_edited_index_reruns_the_step_that_wrote_it(project):
    index = project.dir / paths.IMAGE_INDEX
    original = index.read_text()
    index.write_text(original.rsplit("\n", 2)[0] + "\n")  # the last image dropped
    # download tries its failed URLs again (new elapsed_s in the manifest), so split runs on a changed file.
    assert project.flow() == {**CACHED, "download": "Completed", "split": "Completed"}
    assert index.read_text() == original


def test_a_deleted_model_is_trained_again(project):
    model = project.dir / "models" / "alexnet.h5"
    before = model.read_bytes()
    model.unlink()
    states = project.flow()
    # Evaluate reads the model by content: it reruns only if the retrained model differs.
    evaluate = "Cached" if model.read_bytes() == before else "Completed"
    assert states == {**CACHED, "train": "Completed", "evaluate": evaluate}


def test_an_edited_url_list_is_fetched_again(project):
    urls = project.dir / "data" / "urls" / "ships.txt"
    original = urls.read_text()
    urls.write_text(original + "http://127.0.0.1:9/extra.jpg\n")
    assert project.flow() == {**CACHED, "fetch_urls": "Completed"}
    assert urls.read_text() == original


def test_a_changed_step_module_reruns_that_step_and_what_its_output_feeds(project):
    module = project.dir / "tasks" / "split.py"
    source = module.read_text()
    # A behaviour change: the draw that assigns each image to a subset.
    changed = source.replace('f"{seed}:{sha256}"', 'f"{seed}/{sha256}"')
    assert changed != source
    module.write_text(changed)
    try:
        assert project.flow() == {**CACHED, "split": "Completed", "augment": "Completed", "train": "Completed",
                                  "evaluate": "Completed"}
        assert project.flow() == CACHED
    finally:
        module.write_text(source)


def wait_for_holder(project, process) -> dict:
    """What the lock file says once `process` holds the project folder's lock."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            found = json.loads((project.dir / lock.LOCK).read_text())
        except (OSError, ValueError):
            found = {}
        if found.get("pid") == process.pid:
            return found
        time.sleep(0.2)
    raise AssertionError("the run never took the lock")


def test_two_runs_at_once_take_turns_and_leave_one_complete_run(project):
    first = subprocess.Popen(["alexnet", "run", "-S", "train.epochs=3"], cwd=project.dir, env=project.env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    holder = wait_for_holder(project, first)
    assert holder["who"].startswith("flow run ")
    second = subprocess.Popen(["alexnet", "run"], cwd=project.dir, env=project.env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    # The second said once whom it waited for, then ran after the first: its train saw the first's model and
    # made its own, so the outputs are those of the second run, whole, and DVC recorded them.
    assert outputs[1].count("waiting for flow run") == 1 and holder["who"] in outputs[1], outputs[1]
    assert "has finished; going on" in outputs[1]
    history = (project.dir / "metrics" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 2  # header + params.yaml's epochs, not the first run's 3
    assert project.flow() == CACHED
    assert run([sys.executable, "-m", "dvc", "status"], project.dir).stdout.strip() == \
        "Data and pipelines are up to date."


def test_a_run_killed_while_holding_the_lock_does_not_block_the_next(project):
    killed = subprocess.Popen(["alexnet", "run", "-S", "train.epochs=3"], cwd=project.dir, env=project.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_holder(project, killed)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(30)
    start = time.monotonic()
    states = project.flow()
    assert "waiting for" not in project.output and time.monotonic() - start < 300
    assert set(states.values()) <= {"Cached", "Completed"}
    assert project.flow() == CACHED


def test_readers_never_wait_for_the_lock(project, tmp_path):
    image = tmp_path / "ship.jpg"
    cv2.imwrite(str(image), np.full((90, 120, 3), 128, np.uint8))
    with lock.held(project.dir, "a test holding the folder", timeout_s=0):
        predicted = run(["alexnet", "predict", str(image)], project.dir, env=project.env, timeout=180)
        assert str(image) in predicted.stdout
        run([sys.executable, "-m", "dvc", "status"], project.dir, timeout=120)
        run([sys.executable, "-m", "dvc", "metrics", "show"], project.dir, timeout=120)
