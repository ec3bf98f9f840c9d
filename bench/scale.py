"""The data steps, DVC and the flow's caches as the data set grows: 20,000 and 200,000 images.

For each size, an ImageNet-shaped local source is generated outside the project: C
classes (wnid folders) of `--per-class` small JPEGs (about 2.5 KB), named as in
ILSVRC-2012 (`<wnid>/<wnid>_<n>.JPEG`). Then, in one project copy, the data steps
run one by one with `alexnet stage` (each step's own time, and the peak memory of
its process), followed by `dvc commit -f` of them, `dvc repro` (train, evaluate) and
a flow run that must find all six steps cached; in a second copy, a first flow
run (`alexnet run` against a Prefect server started beforehand, so its start is not
counted; a small network, one epoch), a no-op `dvc status` and `dvc repro`, and a
no-change rerun of the flow. Figures are printed side by side for every size, with
their ratios between the largest and the smallest size and the targets, and
projected to ImageNet-1k's 1,281,167 training images.

    python bench/scale.py [--sizes 20000 200000] [--per-class 1250] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml
from common import ENV, project_copy, stage, step_table, timed
from rerun import start_server

DATA_STEPS = ("fetch_urls", "download", "split", "augment")
IMAGENET = 1_281_167
SETTINGS = {
    "download": {"min_images_per_class": 1},
    "augment": {"image_size": 76, "crop_size": 67},
    "model": {"width": 0.125},
    "train": {"epochs": 1, "batch_size": 256, "schedule": "constant"},
    "evaluate": {"ten_crop": False},
}


def generate(folder: Path, images: int, per_class: int, wnids: list[str] | None = None) -> dict[str, dict]:
    """`images` small distinct JPEGs in wnid folders (made-up wnids unless given); the classes as params.yaml
    names them."""
    rng = np.random.default_rng(0)
    count = math.ceil(images / per_class)
    wnids = wnids or [f"n{10_000_000 + c:08d}" for c in range(count)]
    classes = {}
    for c, wnid in enumerate(wnids[:count]):
        classes[wnid] = {"wnid": wnid}
        (folder / wnid).mkdir(parents=True)
        for i in range(min(per_class, images - c * per_class)):
            grid = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)  # a smooth random picture, 48x64
            image = cv2.resize(grid, (64, 48), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(folder / wnid / f"{wnid}_{i}.JPEG"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return classes


def dvc_files(project: Path) -> int:
    """Files DVC tracks: every output of every stage in dvc.lock."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return sum(out.get("nfiles", 1) for stage in lock["stages"].values() for out in stage.get("outs", []))


def project(target: Path, source: Path, classes: dict) -> Path:
    overrides = {**SETTINGS, "data": {"source": "folder", "folder": str(source), "classes": classes,
                                      "images_per_class": None}}
    copy = project_copy(target)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section] = {**params.get(section, {}), **values}
    params["data"]["classes"] = classes  # replaced, not merged with the demo's
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return copy


def measure(workdir: Path, images: int, per_class: int, env: dict) -> dict:
    source = workdir / "source"
    start = time.monotonic()
    classes = generate(source, images, per_class)
    print(f"  {images} images in {len(classes)} classes generated in {time.monotonic() - start:.0f} s", flush=True)
    result = {"images": images, "classes": len(classes), "steps": {}}
    dvc = [sys.executable, "-m", "dvc"]

    staged = project(workdir / "staged", source, classes)
    for name in DATA_STEPS:
        done = result["steps"][name] = stage(name, staged)
        print(f"  stage {name:<10} {done['seconds']:8.1f} s  {done['peak_mb']:6.0f} MB", flush=True)
    result["dvc_commit"] = timed([*dvc, "commit", "-f", *DATA_STEPS], staged)[0]
    print(f"  dvc commit -f  {result['dvc_commit']:8.1f} s", flush=True)
    # The other door: `dvc repro` (train and evaluate; the data steps are committed), then the flow.
    timed([*dvc, "repro"], staged)
    result["flow_after_repro"], _, _, output = timed(["alexnet", "run"], staged, env)
    assert output.count("cached: made by alexnet stage") == 6, output
    print(f"  flow after dvc repro {result['flow_after_repro']:8.1f} s (six steps cached)", flush=True)

    flowed = project(workdir / "flowed", source, classes)
    result["flow_first"], result["flow_peak_mb"], _, output = timed(["alexnet", "run"], flowed, env)
    result["flow_steps"] = _step_seconds(output)
    print(f"  flow, first run  {result['flow_first']:8.1f} s  {result['flow_peak_mb']:6.0f} MB", flush=True)
    result["dvc_status"] = timed([*dvc, "status"], flowed)[0]
    _, _, _, repro = timed([*dvc, "repro"], flowed)
    assert "Running stage" not in repro, repro
    result["dvc_repro"] = timed([*dvc, "repro"], flowed)[0]
    result["flow_rerun"] = timed(["alexnet", "run"], flowed, env)[0]
    result["dvc_files"] = dvc_files(flowed)
    print(f"  dvc status {result['dvc_status']:.1f} s, dvc repro {result['dvc_repro']:.1f} s, "
          f"flow rerun {result['flow_rerun']:.1f} s, {result['dvc_files']} files tracked", flush=True)
    return result


def _step_seconds(output: str) -> dict[str, float]:
    """Each step's own seconds in a flow run, from the run's summary (`    fetch_urls  ran in 0.1 s`)."""
    return {name: float(s) for name, s in re.findall(r"^    (\w+) +ran in ([\d.]+) s$", output, re.M)}


def report(results: list[dict]) -> None:
    large = results[-1]
    sizes = [r["images"] for r in results]
    print(f"\nscale: {', '.join(f'{n:,}' for n in sizes)} images ({', '.join(str(r['classes']) for r in results)} "
          "classes), 2.5 KB JPEGs, folder source")
    step_table(results, DATA_STEPS)
    steps = sum(large["steps"][n]["seconds"] for n in DATA_STEPS)
    in_flow = sum(large["flow_steps"].get(n, math.nan) for n in DATA_STEPS)
    rows = [
        ("files tracked by DVC", f"{large['dvc_files']} (1 per {large['images'] / large['dvc_files']:.0f} images)",
         "<= 1 per 500 images"),
        ("no-op dvc status", f"{large['dvc_status']:.1f} s", "<= 5 s"),
        ("no-op dvc repro", f"{large['dvc_repro']:.1f} s", "<= 5 s"),
        ("dvc commit -f / data steps", f"{large['dvc_commit']:.1f} s = {large['dvc_commit'] / steps:.1%}", "<= 10%"),
        ("flow rerun / first run", f"{large['flow_rerun']:.1f} / {large['flow_first']:.1f} s = "
                                   f"{large['flow_rerun'] / large['flow_first']:.1%}", "<= 5% and <= 15 s"),
        ("flow after dvc repro / rerun", f"{large['flow_after_repro']:.1f} / {large['flow_rerun']:.1f} s = "
                                         f"{large['flow_after_repro'] / large['flow_rerun']:.2f}x", "<= 1.2x"),
        ("data steps in the flow / stage", f"{in_flow:.1f} / {steps:.1f} s = {in_flow / steps:.2f}x", "<= 1.1x"),
    ]
    print(f"\nat {large['images']:,} images")
    for name, value, target in rows:
        print(f"  {name:<32} {value:<34} target {target}")
    print(f"\nprojected to ImageNet-1k ({IMAGENET:,} images), from the per-image cost at {large['images']:,}:")
    for name in DATA_STEPS:
        print(f"  {name:<12} {large['steps'][name]['seconds'] / large['images'] * IMAGENET / 60:8.1f} min")
    print(f"  dvc commit   {large['dvc_commit'] / large['images'] * IMAGENET / 60:8.1f} min (as bytes grow; "
          f"files tracked about {large['dvc_files'] / large['images'] * IMAGENET:.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--per-class", type=int, default=1250)
    parser.add_argument("--workdir", type=Path, help="where to generate (default: a temp folder, removed after)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(dir=args.workdir))
    server, api = start_server(root / "home")
    env = {**ENV, "PREFECT_API_URL": api, "PREFECT_HOME": str(root / "home")}
    results = []
    try:
        for images in args.sizes:
            print(f"{images} images:", flush=True)
            results.append(measure(root / str(images), images, args.per_class, env))
            shutil.rmtree(root / str(images))
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
        shutil.rmtree(root, ignore_errors=True)
    report(results)


if __name__ == "__main__":
    main()
