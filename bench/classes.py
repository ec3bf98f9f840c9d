"""A thousand classes end to end: ImageNet-1k's classes, twelve small images each, every step and the flow.

The 1,000 ILSVRC-2012 classes (`data.classes: imagenet1k`, so plots and summaries
carry their names) with 12 generated JPEGs each as a local folder source, run step
by step with `alexnet stage` (each step's own seconds, the peak memory of its
process and the lines it prints), then end to end with `alexnet run` against a
Prefect server started beforehand. The baseline is the same run with 2 classes of
12 images (the summaries' length must not grow with the classes).

    python bench/classes.py [--per-class 12]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from common import ENV, timed
from rerun import start_server
from scale import generate, project

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks import synsets  # noqa: E402
from tasks.step import STEP_NAMES  # noqa: E402

SETTINGS = {"split": {"validation_fraction": 0.25}, "download": {"min_images_per_class": 2}}


def measure(workdir: Path, classes: int, per_class: int, env: dict) -> dict:
    source = workdir / "source"
    wnids = list(synsets.names())[:classes]
    generated = generate(source, classes * per_class, per_class, wnids)
    staged = project(workdir / "staged", source, generated)
    params = yaml.safe_load((staged / "params.yaml").read_text())
    for section, values in SETTINGS.items():
        params[section] = {**params.get(section, {}), **values}
    params["data"]["classes"] = "imagenet1k" if classes == 1000 else generated
    (staged / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    steps = {}
    for name in STEP_NAMES:
        wall, peak, _, output = timed(["alexnet", "stage", name], staged)
        seconds = float(re.search(rf"alexnet stage {name}: done in ([\d.]+) s", output).group(1))
        printed = [line for line in output.splitlines() if not line.startswith(("Epoch ", "alexnet stage"))
                   and "/step" not in line and "WARNING" not in line and line.strip()]
        steps[name] = {"seconds": seconds, "peak_mb": peak, "lines": len(printed)}
        print(f"  {classes} classes, stage {name:<10} {seconds:7.1f} s {peak:6.0f} MB {len(printed):4d} lines",
              flush=True)
    flowed = workdir / "flowed"
    shutil.copytree(staged, flowed, ignore=shutil.ignore_patterns("data", "models", "metrics", "plots", "logs",
                                                                 ".alexnet", "dvc.lock"))
    wall, peak, _, output = timed(["alexnet", "run"], flowed, env)
    summary = output[output.index("alexnet: pipeline finished"):].splitlines()
    return {"steps": steps, "flow": wall, "flow_peak_mb": peak, "summary_lines": len(summary)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(dir=args.workdir))
    server, api = start_server(root / "home")
    env = {**ENV, "PREFECT_API_URL": api, "PREFECT_HOME": str(root / "home")}
    try:
        results = {n: measure(root / str(n), n, args.per_class, env) for n in (2, 1000)}
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
        shutil.rmtree(root, ignore_errors=True)
    small, large = results[2], results[1000]
    print(f"\n{args.per_class} images per class; `alexnet stage` per step (seconds, peak MB, lines printed)")
    print(f"{'step':<12} {'2 classes':>24} {'1,000 classes':>24}   target at 1,000")
    for name in STEP_NAMES:
        cells = [f"{r['steps'][name]['seconds']:7.1f} s {r['steps'][name]['peak_mb']:6.0f} MB "
                 f"{r['steps'][name]['lines']:3d} l" for r in (small, large)]
        target = "<= 60 s, <= 1,500 MB" if name == "evaluate" else ""
        print(f"{name:<12} {cells[0]:>24} {cells[1]:>24}   <= 40 lines{', ' + target if target else ''}")
    print(f"{'alexnet run':<12} {small['flow']:>9.1f} s {small['flow_peak_mb']:6.0f} MB "
          f"{large['flow']:>12.1f} s {large['flow_peak_mb']:6.0f} MB   (summary: {small['summary_lines']} and "
          f"{large['summary_lines']} lines)")


if __name__ == "__main__":
    main()
