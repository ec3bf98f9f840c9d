"""The tf.data input pipeline: canonical images in, augmented crops out.

Training: the paper's random crop, horizontal flip and PCA colour shift, applied
online with stateless random ops (deterministic for a seed, parallel-safe).
Evaluation: the centre crop. The model normalises its own input, so the pipeline
yields RGB pixels in [0, 255].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from tasks import paths
from tasks.config import Augment
from tasks.step import StepError

AUTOTUNE = tf.data.AUTOTUNE


def read_prepared(workdir: Path) -> tuple[pd.DataFrame, dict]:
    """The augment step's index (with absolute paths) and colour statistics."""
    index_path, stats_path = workdir / paths.AUGMENT_INDEX, workdir / paths.STATS
    for path in (index_path, stats_path):
        if not path.is_file():
            raise StepError(f"missing {path}: run the augment step first")
    index = pd.read_csv(index_path, keep_default_na=False)
    index["path"] = [str(workdir / p) for p in index["path"]]
    return index, json.loads(stats_path.read_text())


def load(path: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    return tf.cast(image, tf.float32)


def augment(image: tf.Tensor, seed: tf.Tensor, cfg: Augment, stats: dict) -> tf.Tensor:
    """One training view of a canonical image; `seed` is a shape-[2] int tensor."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    image = tf.image.stateless_random_crop(image, (cfg.crop_size, cfg.crop_size, 3), seed=seeds[0])
    if cfg.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    if cfg.pca_std > 0:
        # The paper's colour augmentation: add sum_i alpha_i * lambda_i * p_i, alpha ~ N(0, std).
        alpha = tf.random.stateless_normal([3], seed=seeds[2], stddev=cfg.pca_std)
        eigval = tf.constant(stats["pca_eigval"], tf.float32)
        eigvec = tf.constant(stats["pca_eigvec"], tf.float32)  # columns are eigenvectors
        shift = tf.linalg.matvec(eigvec, alpha * eigval) * 255.0
        image = tf.clip_by_value(image + shift, 0.0, 255.0)
    return image


def centre_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    offset = (tf.shape(image)[0] - size) // 2
    return tf.image.crop_to_bounding_box(image, offset, offset, size, size)


def training_set(index: pd.DataFrame, cfg: Augment, stats: dict, batch_size: int, seed: int) -> tf.data.Dataset:
    paths = tf.constant(index["path"].tolist())
    labels = tf.constant(index["label"].to_numpy(np.int32))
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.shuffle(len(index), seed=seed, reshuffle_each_iteration=True)
    # One independent random stream per element, drawn from the seed.
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=seed).batch(2))
    ds = ds.map(
        lambda item, s: (augment(load(item[0]), s, cfg, stats), item[1]),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def evaluation_set(index: pd.DataFrame, cfg: Augment, batch_size: int) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((index["path"].tolist(), index["label"].to_numpy(np.int32)))
    ds = ds.map(lambda p, y: (centre_crop(load(p), cfg.crop_size), y), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE)
