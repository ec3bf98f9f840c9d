"""What caching saves: wall time of a first run, a no-change rerun and a one-param
rerun of the flow, and of a no-change `dvc repro`, on the shipped demo params.

The flow runs in this process against a Prefect server started beforehand (its start
is not counted), so the figures are the flow's own cost: hashing inputs, cache
lookups, API calls and the steps that really run.

    python bench/rerun.py
Targets: no-change rerun at most 10% of the first run; no-change `dvc repro` under 2 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from common import ENV, free_port, project_copy


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**ENV, "PREFECT_HOME": str(home), "PREFECT_SERVER_UI_API_URL": api}
    server = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(240):
        try:
            if requests.get(f"{api}/health", timeout=1).ok:
                return server, api
        except requests.RequestException:
            time.sleep(0.5)
    sys.exit("prefect server did not start")


def timed(label: str, fn) -> float:
    start = time.monotonic()
    fn()
    seconds = time.monotonic() - start
    print(f"  {label:<32} {seconds:8.1f} s", flush=True)
    return seconds


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        project = project_copy(tmp / "project")
        server, api = start_server(tmp / "home")
        try:
            os.environ.update(ENV, PREFECT_API_URL=api, PREFECT_HOME=str(tmp / "home"))
            os.chdir(project)
            from flows.full import alexnet

            print("flow runs (server already up):")
            first = timed("first run", lambda: alexnet())
            rerun = timed("no-change rerun", lambda: alexnet())
            param = timed("rerun, train.epochs changed", lambda: alexnet(overrides=["train.epochs=20"]))
            dvc = [sys.executable, "-m", "dvc", "repro"]
            subprocess.run([*dvc, "--quiet"], env=ENV, check=True)  # back to params.yaml's outputs
            print("dvc:")
            repro = timed("no-change dvc repro", lambda: subprocess.run(dvc, env=ENV, check=True,
                                                                          stdout=subprocess.DEVNULL))
        finally:
            os.killpg(server.pid, 15)
            server.wait(30)
    print()
    print(f"{'figure':<36} {'value':>8} {'target':>10}")
    print(f"{'no-change rerun / first run':<36} {rerun / first:>8.1%} {'<= 10%':>10}")
    print(f"{'one-param rerun / first run':<36} {param / first:>8.1%} {'':>10}")
    print(f"{'no-change dvc repro (s)':<36} {repro:>8.2f} {'< 2 s':>10}")


if __name__ == "__main__":
    main()
