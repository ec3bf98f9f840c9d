"""Wall time per step of the demo pipeline: the Prefect flow vs `dvc repro`, same run.

The flow runs the six steps in one process (`alexnet run`, a temporary Prefect
server included); `dvc repro` starts one `alexnet stage` process per stage, so each
stage also pays its imports. Both run the shipped demo params.yaml on fresh copies.

    python bench/pipeline.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ENV, project_copy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.step import STEP_NAMES  # noqa: E402

SCRIPT = """
import json, sys
from flows.full import alexnet
summaries = alexnet()
print("SUMMARIES " + json.dumps({k: v.get("seconds") for k, v in summaries.items()}))
"""


def flow_times(project: Path) -> tuple[dict[str, float], float]:
    start = time.monotonic()
    env = {**ENV, "PREFECT_HOME": str(project / ".prefect-home")}  # a temporary server of its own
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=project, env=env, capture_output=True, text=True)
    total = time.monotonic() - start
    if done.returncode:
        sys.exit(f"flow failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    line = next(l for l in done.stdout.splitlines() if l.startswith("SUMMARIES "))
    return json.loads(line.removeprefix("SUMMARIES ")), total


def dvc_times(project: Path) -> tuple[dict[str, float], float]:
    times = {}
    for name in STEP_NAMES:
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", name], cwd=project, env=ENV,
                              capture_output=True, text=True)
        times[name] = time.monotonic() - start
        if done.returncode:
            sys.exit(f"dvc repro {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return times, sum(times.values())


def main() -> None:
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        flow, flow_total = flow_times(project_copy(Path(a)))
        dvc, dvc_total = dvc_times(project_copy(Path(b)))
    print(f"{'step':<12} {'flow (s)':>9} {'dvc repro (s)':>14} {'flow/dvc':>9}")
    for name in STEP_NAMES:
        print(f"{name:<12} {flow[name]:>9.1f} {dvc[name]:>14.1f} {flow[name] / dvc[name]:>9.2f}")
    steps = sum(flow[n] for n in STEP_NAMES)
    print(f"{'steps':<12} {steps:>9.1f} {dvc_total:>14.1f} {steps / dvc_total:>9.2f}")
    print(f"{'end to end':<12} {flow_total:>9.1f} {dvc_total:>14.1f} {flow_total / dvc_total:>9.2f}"
          "   (flow: incl. Prefect start-up and the DVC commit)")


if __name__ == "__main__":
    main()
