"""The training input pipeline against the JPEG decode limit, and training overlapped with its input.

Part 1, images per second from the same shard of canonical 256x256 JPEGs (generated
demo photos, stored as the augment step stores them), each figure the median of
interleaved rounds:

- the decode limit: every core decoding the shard's JPEGs in full and nothing else,
  with TensorFlow's decoder in tf.data and with OpenCV on a thread per core (the
  faster of the two is the limit);
- the training pipeline (`tasks.learning.pipeline.training_set`) with the `paper` policy at
  227x227 (random crop, flip, PCA colour shift) and with the `seed` policy (the
  tutorial's warp), batches of 128, and its ratio to the limit (target: 0.70 or more
  for `paper`);
- Keras's legacy `ImageDataGenerator` with the tutorial's settings, reading the same
  images as files with `flow_from_directory`, for comparison.

Part 2, one epoch of the demo's model (quarter width, 112x112 crops of 128x128
images) on the same number of images: the input alone (the pipeline drawn and
dropped), the compute alone (the same steps on one batch held in memory), and the
epoch as training runs it; the epoch should take about the longer of the two, not
their sum.

    python bench/input_pipeline.py [--images 2048] [--rounds 3]
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
from tasks.acquire import demo_images  # noqa: E402
from tasks.config import Augment  # noqa: E402
from tasks.learning import pipeline
from tasks.params import validate
from tasks.storage import canonical, shards

BATCH, SIZE, CROP = 128, 256, 227
EPOCHS = 2  # per measurement, so start-up costs weigh little


def write_images(folder: Path, count: int, size: int = SIZE) -> tuple[pd.DataFrame, dict]:
    """Canonical JPEGs in a shard (as the augment step stores them) and in class folders (for the legacy
    generator), the shard's index and the colour statistics."""
    total, rows = np.zeros(13), []
    with shards.writing(folder / "train.tar") as shard:
        for i in range(count):
            kind = demo_images.KINDS[i % 2]
            square = canonical.canonical(demo_images.render(kind, i), size)
            data = cv2.imencode(".jpg", square, [cv2.IMWRITE_JPEG_QUALITY, canonical.QUALITY])[1].tobytes()
            (folder / kind).mkdir(parents=True, exist_ok=True)
            (folder / kind / f"{i}.jpg").write_bytes(data)
            total += canonical.moments(square)
            rows.append({"shard": str(folder / "train.tar"), "offset": shard.add(f"{kind}/{i}.jpg", data),
                         "size": len(data), "label": i % 2})
    return pd.DataFrame(rows), canonical.colour_stats(total)


def decode_tf(index: pd.DataFrame):
    def images():
        shard = pipeline.Shards(index).in_order().repeat(EPOCHS)
        return pipeline.with_options(shard.map(lambda data, _: pipeline.decode(data),
                                               num_parallel_calls=pipeline.AUTOTUNE).batch(BATCH).prefetch(2))
    return images


def decode_opencv(index: pd.DataFrame):
    with open(index["shard"][0], "rb") as shard:
        blob = shard.read()
    jpegs = [np.frombuffer(blob, np.uint8, size, offset) for offset, size in zip(index["offset"], index["size"])]

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


def part_one(folder: Path, count: int, rounds: int) -> None:
    index, stats = write_images(folder, count)
    runs = {
        "decode limit: tf.data, decode_jpeg, every core": decode_tf(index),
        "decode limit: OpenCV, a thread per core": decode_opencv(index),
        "training pipeline, paper policy (227x227)": training(index, stats, "paper"),
        "training pipeline, seed policy (227x227)": training(index, stats, "seed"),
        "legacy ImageDataGenerator (tutorial's settings)": legacy(folder),
    }
    for make in runs.values():  # warm up: page cache, graph tracing
        next(iter(make()))
    rates = {name: [] for name in runs}
    for _ in range(rounds):
        for name, make in runs.items():
            rates[name].append(rate(make()))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    limit = max(medians[name] for name in medians if name.startswith("decode limit"))
    sizes = index["size"]
    print(f"input pipeline: {count} canonical JPEGs of {SIZE}x{SIZE} (mean {sizes.mean() / 1024:.1f} KB) in one "
          f"shard, batches of {BATCH}, {os.cpu_count()} cores; median of {rounds} interleaved rounds")
    print(f"{'pipeline':<50} {'images/s':>9} {'of limit':>9}  rounds")
    for name, values in rates.items():
        print(f"{name:<50} {medians[name]:>9.0f} {medians[name] / limit:>9.2f}  {' '.join(f'{v:.0f}' for v in values)}")


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
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        part_one(Path(one), args.images, args.rounds)
        part_two(Path(two), args.images, args.rounds)


if __name__ == "__main__":
    main()
