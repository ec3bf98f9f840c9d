"""Images per second of the tf.data input pipeline vs Keras's legacy ImageDataGenerator.

The same 256x256 JPEG files (generated demo photos, as the augment step stores
them) go through: the project's tf.data pipeline with the paper's augmentation
(random 227x227 crop, flip, PCA colour shift) and with the tutorial's (rotation,
shift, shear, zoom on the centre crop), and the legacy `ImageDataGenerator` with
the tutorial's settings (rescale 1/255, rotation 10, shifts 0.1, shear 0.1,
zoom 0.1) reading the files with `flow_from_directory` at 227x227. Each pipeline
is set up (directory scan, graph tracing), then three epochs of batches of 32 are
drawn and discarded, timed. Rounds interleave the three, and the figure is the
median; ratios are against the legacy generator.

    python bench/input_pipeline.py [--images 320] [--rounds 3]

Needs the `bench` extra (SciPy, which the legacy generator's transforms use).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks import canonical, demo_images, pipeline, shards  # noqa: E402
from tasks.config import Augment  # noqa: E402

BATCH, SIZE, CROP = 32, 256, 227
EPOCHS = 3  # per measurement, so start-up costs weigh little


def write_images(folder: Path, count: int) -> tuple[pd.DataFrame, dict]:
    """Canonical 256x256 JPEGs in a shard (as the augment step stores them) and in class folders (for the
    legacy generator), the shard's index and the colour statistics."""
    total, rows = np.zeros(13), []
    with shards.writing(folder / "train.tar") as shard:
        for i in range(count):
            kind = demo_images.KINDS[i % 2]
            square = canonical.canonical(demo_images.render(kind, i), SIZE)
            data = cv2.imencode(".jpg", square, [cv2.IMWRITE_JPEG_QUALITY, canonical.QUALITY])[1].tobytes()
            (folder / kind).mkdir(parents=True, exist_ok=True)
            (folder / kind / f"{i}.jpg").write_bytes(data)
            total += canonical.moments(square)
            rows.append({"shard": str(folder / "train.tar"), "offset": shard.add(f"{kind}/{i}.jpg", data),
                         "size": len(data), "label": i % 2})
    return pd.DataFrame(rows), canonical.colour_stats(total)


def tf_data(index: pd.DataFrame, stats: dict, policy: str):
    cfg = Augment(image_size=SIZE, crop_size=CROP, policy=policy)
    return lambda: pipeline.training_set(index, cfg, stats, BATCH, seed=1, epochs=EPOCHS)


def legacy(folder: Path):
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    generator = ImageDataGenerator(rescale=1.0 / 255, rotation_range=10, width_shift_range=0.1,
                                   height_shift_range=0.1, shear_range=0.1, zoom_range=0.1)

    def batches():
        flow = generator.flow_from_directory(str(folder), target_size=(CROP, CROP), batch_size=BATCH, seed=1,
                                             class_mode="sparse")
        return (next(flow) for _ in range(EPOCHS * len(flow)))

    return batches


def rate(batches) -> float:
    """Images per second drawn from `batches`, a pipeline already set up."""
    start, images = time.perf_counter(), 0
    for x, _ in batches:
        images += len(x)
        assert tuple(x.shape[1:]) == (CROP, CROP, 3)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index, stats = write_images(Path(tmp), args.images)
        runs = {
            "legacy ImageDataGenerator (tutorial's settings)": legacy(Path(tmp)),
            "tf.data, paper policy": tf_data(index, stats, "paper"),
            "tf.data, seed policy (tutorial's settings)": tf_data(index, stats, "seed"),
        }
        for make in runs.values():  # warm up: file cache, graph tracing
            next(iter(make()))
        rates = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, make in runs.items():
                rates[name].append(rate(make()))
    base = statistics.median(next(iter(rates.values())))
    print(f"input pipeline: {args.images} JPEGs of {SIZE}x{SIZE} -> batches of {BATCH} at {CROP}x{CROP}, "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'pipeline':<48} {'images/s':>9} {'vs legacy':>10}  rounds")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<48} {median:>9.0f} {median / base:>9.1f}x  {' '.join(f'{v:.0f}' for v in values)}")


if __name__ == "__main__":
    main()
