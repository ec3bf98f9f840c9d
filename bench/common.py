"""Helpers shared by the benchmarks: a throwaway project copy, telemetry off."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_ALBUMENTATIONS_UPDATE": "1",  # img2dataset imports albumentations, which asks PyPI for news
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project_copy(target: Path, overrides: dict | None = None) -> Path:
    """The tracked project files in `target`, as a git repo, with the demo source on a free port."""
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        if not name.startswith(("tests/", "bench/", "docs/")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    params = yaml.safe_load((target / "params.yaml").read_text())
    params["data"]["url_list_endpoint"] = (
        f"http://127.0.0.1:{free_port()}/api/text/imagenet.synset.geturls?wnid={{wnid}}")
    for section, values in (overrides or {}).items():
        params.setdefault(section, {}).update(values)
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=bench", "-c", "user.email=bench@localhost",
                                                   "commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=target, check=True, env=ENV)
    return target


# Runs a command in a grandchild and reports its resources. Linux carries a process's peak memory
# over fork and exec, so a command started straight from a benchmark that holds gigabytes would
# report the benchmark's peak, not its own; forked from this small launcher it starts afresh.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(f"LAUNCHED {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}", file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def timed(args: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float, float, str]:
    """(wall seconds, peak memory in MB, CPU seconds, output) of a command and its children; it must succeed."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *args], cwd=cwd, env=env or ENV, capture_output=True,
                          text=True)
    wall = time.monotonic() - start
    launched = re.search(r"^LAUNCHED (\d+) ([\d.]+)$", done.stderr, re.M)
    output = done.stdout + re.sub(r"^LAUNCHED .*\n?", "", done.stderr, flags=re.M)
    if done.returncode or not launched:
        sys.exit(f"{' '.join(args)} failed in {cwd}:\n{output[-4000:]}")
    return wall, int(launched[1]) / 1024, float(launched[2]), output


def stage(name: str, project: Path) -> dict:
    """`alexnet stage <name>` in `project`: the step's own seconds, peak memory (MB) and cores kept busy."""
    wall, peak, cpu, output = timed(["alexnet", "stage", name], project)
    seconds = float(re.search(rf"alexnet stage {name}: done in ([\d.]+) s", output)[1])
    return {"seconds": seconds, "peak_mb": peak, "cores_busy": cpu / wall}


def step_table(results: list[dict], steps: tuple[str, ...]) -> None:
    """Per step and size: ms per image, peak MB and cores busy, with the ratios of the largest size to the
    smallest."""
    small, large = results[0], results[-1]
    head = "".join(f" {format(r['images'], ',') + ': ms/img':>15} {'MB':>5} {'busy':>5}" for r in results)
    print(f"{'step':<12}{head} {'ms/img ratio':>13} {'MB ratio':>9}")
    for name in steps:
        cells = "".join(f" {1000 * r['steps'][name]['seconds'] / r['images']:>15.3f} "
                        f"{r['steps'][name]['peak_mb']:>5.0f} {r['steps'][name]['cores_busy']:>5.2f}" for r in results)
        per_image = [r["steps"][name]["seconds"] / r["images"] for r in (small, large)]
        memory = [r["steps"][name]["peak_mb"] for r in (small, large)]
        print(f"{name:<12}{cells} {per_image[1] / per_image[0]:>12.2f}x {memory[1] / memory[0]:>8.2f}x")
