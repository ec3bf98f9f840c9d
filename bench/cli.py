"""How long the `alexnet` command takes to answer: process times against `python -c pass`.

The commands a newcomer types first, each run as a new process in a project whose
demo images are downloaded (`alexnet stage fetch_urls`, `alexnet stage download`),
in interleaved rounds with the baseline; the medians, and their ratios to it.

    python bench/cli.py [ROUNDS]
Targets (2 cores): `alexnet --help` under 1 s, `alexnet images --limit 5` under 2 s.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ENV, project_copy

COMMANDS = {
    "python -c pass": ([sys.executable, "-c", "pass"], None),
    "alexnet --help": (["alexnet", "--help"], 1.0),
    "alexnet --version": (["alexnet", "--version"], None),
    "alexnet images --limit 5": (["alexnet", "images", "--limit", "5"], 2.0),
    "alexnet images --class ships --out picked/": (["alexnet", "images", "--class", "ships", "--out", "picked/"], None),
}


def seconds(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(args, cwd=cwd, env=ENV, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        project = project_copy(Path(tmp))
        for step in ("fetch_urls", "download"):
            subprocess.run(["alexnet", "stage", step], cwd=project, env=ENV, check=True, capture_output=True)
        times: dict[str, list[float]] = {name: [] for name in COMMANDS}
        for _ in range(rounds):  # interleaved, so a burst of load on the machine hits every command alike
            for name, (args, _) in COMMANDS.items():
                times[name].append(seconds(args, project))
    base = statistics.median(times["python -c pass"])
    print(f"{'command':<46} {'median s':>9} {'min s':>7} {'vs python -c pass':>18} {'target':>8}")
    for name, (_, target) in COMMANDS.items():
        median = statistics.median(times[name])
        verdict = "" if target is None else f"< {target:g} s {'ok' if median < target else 'MISSED'}"
        print(f"{name:<46} {median:>9.3f} {min(times[name]):>7.3f} {median / base:>17.1f}x {verdict:>8}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
