"""The data steps on photo-sized JPEGs against the limit of their work: ImageNet-1k's preparation.

For each size (default 20,000 and 200,000 images), ILSVRC-style archives are generated
outside the project from `--distinct` photo-like JPEGs of about 470x400 pixels and
110 KB (bench/photos.py), replicated with distinct bytes, `--per-class` images per
class: ILSVRC2012_img_train.tar (a tar of per-class tars), ILSVRC2012_img_val.tar
(every 50th image) and Kaggle's LOC_val_solution.csv. A project copy runs
params-paper.yaml's data steps on them with `alexnet stage` (fetch_urls, download,
split, augment), each step's own time, the peak memory of its processes and how many
cores it kept busy (CPU time over wall time).

In the same run, the limit of this work on the same cores: every image of the
training tar read from it, decoded in full, shorter side to 256 (INTER_AREA), centre
square, JPEG quality 95, nothing else, on one process and on a process per core. The
data steps' rate is given as a share of it (targets: all four steps 0.60 or more,
augment 0.75 or more), with the figures projected to ImageNet-1k's 1,281,167
training images on 2 and 16 cores. Also: what the download leaves in data/images, and
how far the canonical images of reduced (DCT-scaled) decoding are from full decoding.

    python bench/prep.py [--images 20000 200000] [--distinct 1000] [--per-class 200] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import multiprocessing
from pathlib import Path

import cv2
import numpy as np
import photos
import yaml
from common import project_copy, stage, step_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.acquire import archives  # noqa: E402
from tasks.storage import canonical  # noqa: E402

DATA_STEPS = ("fetch_urls", "download", "split", "augment")
IMAGENET = 1_281_167
SIZE = 256
LIMIT_IMAGES = 10_000  # images the limit is measured on (at most), on all cores; a fifth of that on one


# --- the limit ------------------------------------------------------------------------------


def _limit_work(job: tuple[str, list[tuple[int, int]]]) -> int:
    """Decode in full, shorter side to 256, centre square, JPEG quality 95: the least any preparation does."""
    path, members = job
    with open(path, "rb") as tar:
        for offset, size in members:
            image = cv2.imdecode(np.frombuffer(os.pread(tar.fileno(), size, offset), np.uint8), cv2.IMREAD_COLOR)
            h, w = image.shape[:2]
            scale = SIZE / min(h, w)
            image = cv2.resize(image, (max(SIZE, round(w * scale)), max(SIZE, round(h * scale))),
                               interpolation=cv2.INTER_AREA)
            top, left = (image.shape[0] - SIZE) // 2, (image.shape[1] - SIZE) // 2
            cv2.imencode(".jpg", image[top : top + SIZE, left : left + SIZE], [cv2.IMWRITE_JPEG_QUALITY, 95])
    return len(members)


def limit(train_tar: Path, processes: int, count: int) -> float:
    """Images per second of the limit's work on `processes` processes (one OpenCV thread each)."""
    members = [(offset, size) for _, offset, size in archives.members(train_tar, nested=lambda _: True)][:count]
    jobs = [(str(train_tar), members[i : i + 50]) for i in range(0, len(members), 50)]
    # Started fresh, not forked: a child forked from a process whose OpenCV threads are running can hang.
    with multiprocessing.get_context("spawn").Pool(processes, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
        start = time.monotonic()
        done = sum(pool.imap_unordered(_limit_work, jobs))
        return done / (time.monotonic() - start)


# --- the steps ------------------------------------------------------------------------------


def project(target: Path, source: Path, classes: dict) -> Path:
    """A project copy running params-paper.yaml's data steps on the generated archives."""
    copy = project_copy(target)
    params = yaml.safe_load((copy / "params-paper.yaml").read_text())
    params["data"]["classes"] = classes
    params["data"]["ilsvrc2012"] = {"train": str(source / "ILSVRC2012_img_train.tar"),
                                    "val": str(source / "ILSVRC2012_img_val.tar"),
                                    "val_solution": str(source / "LOC_val_solution.csv")}
    params["download"]["min_images_per_class"] = 1
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return copy


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def measure(workdir: Path, images: int, per_class: int, jpegs: list[bytes]) -> dict:
    source = workdir / "imagenet"
    start = time.monotonic()
    classes = photos.ilsvrc(source, jpegs, images, per_class)
    train = source / "ILSVRC2012_img_train.tar"
    print(f"  {images:,} images in {len(classes)} classes written in {time.monotonic() - start:.0f} s "
          f"({(train.stat().st_size + (source / 'ILSVRC2012_img_val.tar').stat().st_size) / 1e9:.1f} GB)", flush=True)
    result = {"images": images, "classes": len(classes), "steps": {}}
    staged = project(workdir / "project", source, classes)
    for name in DATA_STEPS:
        done = result["steps"][name] = stage(name, staged)
        print(f"  stage {name:<10} {done['seconds']:8.1f} s  {done['peak_mb']:6.0f} MB  "
              f"{done['cores_busy']:4.2f} cores busy", flush=True)
    result["images_mb"] = folder_mb(staged / "data" / "images")
    result["source_mb"] = train.stat().st_size / 1e6
    cores = os.cpu_count() or 1
    result["limit"] = limit(train, cores, LIMIT_IMAGES)
    result["limit_one"] = limit(train, 1, LIMIT_IMAGES // 5)
    print(f"  limit {result['limit']:.0f} images/s on {cores} processes, {result['limit_one']:.0f} on one; "
          f"data/images {result['images_mb']:.1f} MB beside a {result['source_mb']:.0f} MB training tar", flush=True)
    shutil.rmtree(workdir)
    return result


# --- reduced decoding ------------------------------------------------------------------------


def reduced_difference(jpegs: list[bytes]) -> tuple[int, float, float]:
    """(photos decoded reduced, mean and largest per-photo mean absolute pixel difference of their canonical
    images against full decoding)."""
    diffs = []
    for data in jpegs:
        buffer = np.frombuffer(data, np.uint8)
        full = canonical.canonical(cv2.imdecode(buffer, cv2.IMREAD_COLOR), SIZE)
        if canonical.reduction(data, SIZE) == 1:
            continue
        made = canonical.canonical(canonical.decoded(data, SIZE), SIZE)
        diffs.append(np.abs(made.astype(np.int16) - full).mean())
    return len(diffs), float(np.mean(diffs)) if diffs else 0.0, float(np.max(diffs)) if diffs else 0.0


# --- the report ------------------------------------------------------------------------------


def rate(result: dict, steps: tuple[str, ...]) -> float:
    return result["images"] / sum(result["steps"][s]["seconds"] for s in steps)


def report(results: list[dict], jpegs: list[bytes]) -> None:
    large = results[-1]
    cores = os.cpu_count() or 1
    sizes = [len(j) for j in jpegs]
    counts = [f"{r['images']:,}" for r in results]
    print(f"\nprep: {', '.join(counts)} images ({', '.join(str(r['classes']) for r in results)} classes) from "
          f"{len(jpegs):,} distinct photo-like JPEGs (mean {np.mean(sizes) / 1024:.0f} KB, "
          f"{np.percentile(sizes, 5) / 1024:.0f}-{np.percentile(sizes, 95) / 1024:.0f} KB for 90%), ILSVRC-style "
          f"tars, params-paper.yaml's data steps, {cores} cores")
    step_table(results, DATA_STEPS)
    print(f"\n{'':<34}" + "".join(f" {count:>12}" for count in counts) + "   target")
    rows = [
        ("limit, images/s (all cores)", [f"{r['limit']:.0f}" for r in results], ""),
        ("limit on one process", [f"{r['limit_one']:.0f} ({r['limit'] / r['limit_one']:.2f}x)" for r in results], ""),
        ("all four steps, images/s", [f"{rate(r, DATA_STEPS):.0f}" for r in results], ""),
        ("  of the limit", [f"{rate(r, DATA_STEPS) / r['limit']:.2f}" for r in results], ">= 0.60"),
        ("augment of the limit", [f"{rate(r, ('augment',)) / r['limit']:.2f}" for r in results], ">= 0.75"),
        ("data/images, MB", [f"{r['images_mb']:.1f}" for r in results], "the index only"),
        ("training tar, MB", [f"{r['source_mb']:.0f}" for r in results], ""),
    ]
    for name, cells, target in rows:
        print(f"{name:<34}" + "".join(f" {c:>12}" for c in cells) + f"   {target}")
    count, mean, worst = reduced_difference(jpegs)
    print(f"\nreduced decoding: {count} of {len(jpegs)} photos (shorter side >= {2 * SIZE}) decoded at half size; "
          f"their canonical images differ from full decoding's by {mean:.2f} grey levels on average (at most "
          f"{worst:.2f} for one photo)")
    per_image = sum(large["steps"][s]["seconds"] for s in DATA_STEPS) / large["images"]
    scaling = large["limit"] / large["limit_one"] / cores  # per-core efficiency of this machine's extra cores
    print(f"\nprojected to ImageNet-1k ({IMAGENET:,} training images), from the per-image cost at "
          f"{large['images']:,}:")
    print(f"  {cores} cores: {per_image * IMAGENET / 60:.0f} min ({IMAGENET / (per_image * IMAGENET) / cores:.0f} "
          "images/s per core)")
    print(f"  16 cores: {per_image * IMAGENET * cores / (16 * scaling) / 60:.0f} min (scaled as the limit scales "
          f"here, {scaling:.2f} per core)")
    print("  anchors: TensorFlow's ILSVRC-to-TFRecord converter, about 3 hours on one core (119 images/s); "
          "FFCV, over 6 hours to write ImageNet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--distinct", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--workdir", type=Path, help="where to generate (default: a temp folder, removed after)")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    start = time.monotonic()
    jpegs = photos.jpegs(args.distinct)
    print(f"{args.distinct} distinct photos made in {time.monotonic() - start:.0f} s", flush=True)
    root = Path(tempfile.mkdtemp(dir=args.workdir))
    results = []
    try:
        for images in args.images:
            print(f"{images:,} images:", flush=True)
            results.append(measure(root / str(images), images, args.per_class, jpegs))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(results, jpegs)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
