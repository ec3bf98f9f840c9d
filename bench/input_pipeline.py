"""The training input pipeline against the JPEG decode limit, and training overlapped with its input.

Part 1, images per second from the same shards of canonical 256x256 JPEGs (stored as
the augment step stores them, 1,250 to a shard), made from photo-sized JPEGs
(bench/photos.py: about 470x400 and 100 KB, as ImageNet's) and, for comparison, from
the demo source's small generated pictures. For each, interleaved rounds of:

- the decode limit: every core decoding the JPEGs in full and nothing else, with
  TensorFlow's decoder in tf.data and with OpenCV on a thread per core (the faster
  of the two is the limit);
- the training pipeline (`tasks.learning.pipeline.training_set`) with the `paper` policy at
  227x227 (random crop, flip, PCA colour shift) and with the `seed` policy (the
  tutorial's warp), batches of 128, and its ratio to the limit (target: 0.70 or more
  for `paper`, in every round);
- Keras's legacy `ImageDataGenerator` with the tutorial's settings, reading the same
  images as files with `flow_from_directory`, for comparison (`--legacy`).

Each figure is the median of the rounds, beside the slowest round (a start-up cost
or a fall to one core's worth shows there, not in a median).

Part 2, one epoch of the demo's model (quarter width, 112x112 crops of 128x128
images) on the same number of images: the input alone (the pipeline drawn and
dropped), the compute alone (the same steps on one batch held in memory), and the
epoch as training runs it; the epoch should take about the longer of the two, not
their sum.

    python bench/input_pipeline.py [--images 8192] [--rounds 5] [--sources photos demo] [--legacy] [--no-epoch]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import photos  # noqa: E402
from tasks.acquire import demo_images  # noqa: E402
from tasks.config import Augment  # noqa: E402
from tasks.learning import pipeline
from tasks.params import validate
from tasks.storage import canonical, shards

BATCH, SIZE, CROP = 128, 256, 227
SHARD = 1250  # images per shard, as the augment step's default
EPOCHS = 2  # per measurement, so start-up costs weigh little


def canonical_squares(source: str, count: int, size: int) -> list[np.ndarray]:
    """`count` canonical images (BGR), cycling through distinct pictures of `source` (photos or demo)."""
    if source == "photos":
        distinct = [canonical.canonical(photos.photo(i), size) for i in range(min(count, 500))]
    else:
        distinct = [canonical.canonical(demo_images.render(demo_images.KINDS[i % 2], i), size)
                    for i in range(min(count, 2000))]
    return [distinct[i % len(distinct)] for i in range(count)]


def write_images(folder: Path, count: int, size: int = SIZE, source: str = "demo",
                 files: bool = False) -> tuple[pd.DataFrame, dict]:
    """Canonical JPEGs in shards of SHARD images (as the augment step stores them) and, with `files`, in class
    folders (for the legacy generator); their index and colour statistics."""
    total, rows = np.zeros(13), []
    squares = canonical_squares(source, count, size)
    for start in range(0, count, SHARD):
        path = folder / f"train-{start // SHARD:05d}.tar"
        with shards.writing(path) as shard:
            for i in range(start, min(count, start + SHARD)):
                kind = demo_images.KINDS[i % 2]
                data = cv2.imencode(".jpg", squares[i], [cv2.IMWRITE_JPEG_QUALITY, canonical.QUALITY])[1].tobytes()
                if files:
                    (folder / kind).mkdir(parents=True, exist_ok=True)
                    (folder / kind / f"{i}.jpg").write_bytes(data)
                total += canonical.moments(squares[i])
                rows.append({"shard": str(path), "offset": shard.add(f"{kind}/{i}.jpg", data), "size": len(data),
                             "label": i % 2})
    return pd.DataFrame(rows), canonical.colour_stats(total)


def decode_tf(index: pd.DataFrame):
    def images():
        shard = pipeline.Shards(index).in_order().repeat(EPOCHS)
        return pipeline.with_options(shard.map(lambda data, _: pipeline.decode(data),
                                               num_parallel_calls=pipeline.AUTOTUNE).batch(BATCH).prefetch(2))
    return images


def decode_opencv(index: pd.DataFrame):
    jpegs = []
    for path, rows in index.groupby("shard", sort=False):
        blob = Path(path).read_bytes()
        jpegs += [np.frombuffer(blob, np.uint8, size, offset) for offset, size in zip(rows["offset"], rows["size"])]

    def images():
        with ThreadPoolExecutor(os.cpu_count()) as pool:  # OpenCV lets go of the interpreter lock
            for _ in range(EPOCHS):
                for start in range(0, len(jpegs), BATCH):
                    yield np.stack(list(pool.map(lambda j: cv2.imdecode(j, cv2.IMREAD_COLOR),
                                                 jpegs[start : start + BATCH])))
    return images


def training(index: pd.DataFrame, stats: dict, policy: str):
    cfg = Augment(image_size=SIZE, crop_size=CROP, policy=policy)
    return lambda: (pixels for (pixels, _), _ in pipeline.training_set(index, cfg, stats, BATCH, seed=1,
                                                                         epochs=EPOCHS))


def legacy(folder: Path):
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    generator = ImageDataGenerator(rescale=1.0 / 255, rotation_range=10, width_shift_range=0.1,
                                   height_shift_range=0.1, shear_range=0.1, zoom_range=0.1)

    def batches():
        flow = generator.flow_from_directory(str(folder), target_size=(CROP, CROP), batch_size=BATCH, seed=1,
                                             class_mode="sparse")
        return (next(flow)[0] for _ in range(EPOCHS * len(flow)))

    return batches


def rate(batches) -> float:
    """Images per second drawn from `batches`, a pipeline already set up."""
    start, images = time.perf_counter(), 0
    for x in batches:
        images += len(x)
    return images / (time.perf_counter() - start)


def part_one(folder: Path, count: int, rounds: int, source: str, with_legacy: bool) -> None:
    index, stats = write_images(folder, count, source=source, files=with_legacy)
    runs = {
        "decode limit: tf.data, decode_jpeg, every core": decode_tf(index),
        "decode limit: OpenCV, a thread per core": decode_opencv(index),
        "training pipeline, paper policy (227x227)": training(index, stats, "paper"),
        "training pipeline, seed policy (227x227)": training(index, stats, "seed"),
    }
    if with_legacy:
        runs["legacy ImageDataGenerator (tutorial's settings)"] = legacy(folder)
    for make in runs.values():  # warm up: page cache, graph tracing
        next(iter(make()))
    rates = {name: [] for name in runs}
    for _ in range(rounds):
        for name, make in runs.items():
            rates[name].append(rate(make()))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    limit = max(medians[name] for name in medians if name.startswith("decode limit"))
    sizes = index["size"]
    made_from = {"photos": "photo-sized JPEGs (bench/photos.py)", "demo": "the demo's small generated pictures"}
    print(f"\ninput pipeline: {count} canonical JPEGs of {SIZE}x{SIZE} made from {made_from[source]} (mean "
          f"{sizes.mean() / 1024:.1f} KB) in {index['shard'].nunique()} shards, {EPOCHS} epochs per round, batches "
          f"of {BATCH}, {os.cpu_count()} cores; {rounds} interleaved rounds")
    print(f"{'pipeline':<50} {'median':>7} {'of limit':>9} {'slowest':>8} {'/median':>8}  rounds")
    for name, values in rates.items():
        print(f"{name:<50} {medians[name]:>7.0f} {medians[name] / limit:>9.2f} {min(values):>8.0f} "
              f"{min(values) / medians[name]:>8.2f}  {' '.join(f'{v:.0f}' for v in values)}")


def part_two(folder: Path, count: int, rounds: int) -> None:
    import tensorflow as tf

    from tasks import train

    cfg = validate({"augment": {"image_size": 128, "crop_size": 112}, "model": {"width": 0.25},
                    "train": {"batch_size": 32, "epochs": 1, "schedule": "constant"}})
    index, stats = write_images(folder, count, size=128)
    steps = -(-count // cfg.train.batch_size)
    net = train.compile_model(pipeline.training_model(train.build_model(cfg, ["a", "b"], stats)), cfg, steps)

    def batches(seed: int):
        return pipeline.training_set(index, cfg.augment, stats, cfg.train.batch_size, seed=seed, epochs=1)

    held = tf.data.Dataset.from_tensors(next(iter(batches(0)))).repeat(steps)  # one batch, in memory
    runs = {
        "input alone": lambda seed: [None for _ in batches(seed)],
        "compute alone": lambda seed: net.fit(held, epochs=1, steps_per_epoch=steps, verbose=0),
        "the epoch": lambda seed: net.fit(batches(seed), epochs=1, steps_per_epoch=steps, verbose=0),
    }
    times = {name: [] for name in runs}
    for r in range(rounds + 1):  # the first round warms up (tracing), uncounted
        for name, run in runs.items():
            start = time.perf_counter()
            run(r)
            if r:
                times[name].append(time.perf_counter() - start)
    input_s, compute_s, epoch_s = (statistics.median(t) for t in times.values())
    print(f"\none epoch of the demo model, {count} images of 128x128, batches of {cfg.train.batch_size}, median of "
          f"{rounds} interleaved rounds:")
    print(f"  input alone {input_s:.2f} s, compute alone {compute_s:.2f} s, the epoch {epoch_s:.2f} s: "
          f"{epoch_s / max(input_s, compute_s):.2f}x the longer of the two, {epoch_s / (input_s + compute_s):.2f}x "
          "their sum")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sources", nargs="+", choices=["photos", "demo"], default=["photos", "demo"])
    parser.add_argument("--legacy", action="store_true", help="also Keras's ImageDataGenerator (slow)")
    parser.add_argument("--no-epoch", action="store_true", help="part 1 only")
    args = parser.parse_args()
    for source in args.sources:
        with tempfile.TemporaryDirectory() as folder:
            part_one(Path(folder), args.images, args.rounds, source, args.legacy)
    if not args.no_epoch:
        with tempfile.TemporaryDirectory() as folder:
            part_two(Path(folder), args.images, args.rounds)


if __name__ == "__main__":
    main()
