"""Shared fixtures: telemetry off, tiny configs, a demo mirror, throwaway project copies."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Nothing leaves the machine, and no test touches the user's Prefect or DVC state.
os.environ.update(
    DO_NOT_TRACK="1",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    DVC_NO_ANALYTICS="1",
    AWS_EC2_METADATA_DISABLED="true",
    TF_CPP_MIN_LOG_LEVEL="2",
    PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
)
os.environ.pop("PREFECT_API_URL", None)

# A pipeline small enough to run in seconds: few images, small crops, a narrow net.
TINY = {
    "data": {"images_per_class": 24},
    "download": {"workers": 8, "min_images_per_class": 10},
    "split": {"validation_fraction": 0.25},
    "augment": {"image_size": 76, "crop_size": 67, "plot_images": 2},
    "model": {"width": 0.125},
    "train": {"epochs": 2, "batch_size": 16, "schedule": "constant"},
    "evaluate": {"grid_images": 4},
}


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    yield home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def endpoint(port: int) -> str:
    return f"http://127.0.0.1:{port}/api/text/imagenet.synset.geturls?wnid={{wnid}}"


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def tiny_params(port: int, **sections) -> dict:
    """The shipped params.yaml made tiny, with the demo source on `port`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = merge(params, TINY)
    params["data"]["url_list_endpoint"] = endpoint(port)
    return merge(params, sections)


def run(args: list[str], cwd: Path, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def tracked_files() -> list[str]:
    return run(["git", "ls-files"], REPO).stdout.split()


def make_project(target: Path, params: dict) -> Path:
    """A git + DVC repository holding the project's tracked files and `params`."""
    for name in tracked_files():
        if name.startswith(("tests/", "bench/", "docs/")):
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target / name)
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], target)
    run(["git", "add", "-A"], target)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "project"], target)
    return target


@pytest.fixture
def port() -> int:
    return free_port()


class Service:
    """A background process started by a test, stopped (and reaped) by it."""

    def __init__(self, args: list[str], cwd: Path, env: dict, log: Path):
        self.log = log
        self.handle = open(log, "w")
        self.process = subprocess.Popen(args, cwd=cwd, env=env, stdout=self.handle, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def output(self) -> str:
        return self.log.read_text()

    def wait_until(self, ready, timeout: float, what: str) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{what}: process exited {self.process.returncode}\n{self.output()[-4000:]}")
            if ready():
                return
            time.sleep(0.5)
        raise AssertionError(f"{what}: not ready after {timeout}s\n{self.output()[-4000:]}")

    def stop(self) -> None:
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)
        self.handle.close()


# The test server asks for this, as a team's server does (docs/team.md): every client the tests start
# (alexnet run and serve, prefect deploy, workers, the CLI) gives it, and so does API, for the tests' own reads.
AUTH_STRING = f"alexnet:{secrets.token_urlsafe(12)}"
API = requests.Session()
API.auth = tuple(AUTH_STRING.split(":", 1))


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` on a free loopback port, with its own PREFECT_HOME and an auth string."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_API_HOST": "127.0.0.1",
           "PREFECT_SERVER_API_PORT": str(port), "PREFECT_SERVER_UI_API_URL": api, "PREFECT_API_URL": api,
           "PREFECT_SERVER_API_AUTH_STRING": AUTH_STRING, "PREFECT_API_AUTH_STRING": AUTH_STRING}
    server = Service(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                     home, env, home / "server.log")

    def healthy() -> bool:
        try:
            return requests.get(f"{api}/health", timeout=2).ok
        except requests.RequestException:
            return False

    try:
        server.wait_until(healthy, 120, "prefect server")
        server.api, server.env = api, env
        yield server
    finally:
        server.stop()


def _task_runs(api: str, flow_run_id: str) -> list[tuple[str, str]]:
    """(task name, state name) of a flow run's task runs, read from the Prefect API."""
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "sort": "EXPECTED_START_TIME_ASC"}
    runs = API.post(f"{api}/task_runs/filter", json=body, timeout=10).json()
    return [(r["name"].rsplit("-", 1)[0], r["state"]["name"]) for r in runs]


CHUNK_TASKS = ("download_chunk", "augment_chunk")


def task_states(api: str, flow_run_id: str) -> dict[str, str]:
    """{step: state} of the flow run's step tasks, each of which must run once."""
    states = {}
    for name, state in _task_runs(api, flow_run_id):
        if name not in CHUNK_TASKS:
            assert name not in states, f"two task runs named {name}"
            states[name] = state
    return states


def chunk_states(api: str, flow_run_id: str, name: str = "download_chunk") -> list[str]:
    """States of the chunk tasks (download_chunk, augment_chunk) a step ran."""
    return [state for task, state in _task_runs(api, flow_run_id) if task == name]


def latest_flow_run(api: str) -> dict:
    body = {"sort": "START_TIME_DESC", "limit": 1}
    return API.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()[0]
