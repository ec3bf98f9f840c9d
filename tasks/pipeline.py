"""The tf.data input pipeline: canonical images in, augmented crops out.

Every transform is a function of an image and a stateless seed, so a view depends
only on (seed, epoch, position): runs are deterministic and a resumed run sees the
same data as an uninterrupted one. Files are decoded in parallel as they are read,
so the data set need not fit in memory. The model normalises its own input, so
the pipeline yields RGB pixels in [0, 255].

Policies (`augment.policy`): `paper`, random crops, horizontal flips and the PCA
colour shift; `seed`, the tutorial's ImageDataGenerator settings (rotation, shift,
shear, zoom) on the centre crop; `none`, the centre crop. Evaluation uses the
centre crop, or the paper's ten crops.
"""

from __future__ import annotations

import json
import math
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


def normalisation(cfg: Augment, stats: dict, init: str) -> dict | None:
    """Mean and deviation the model's Normalization layer applies to [0, 255] pixels."""
    how = cfg.normalize
    if how == "auto":
        # The tutorial rescales by 1/255; the paper's N(0, 0.01) weights expect its
        # mean-subtracted pixels; He initialisation expects inputs of unit variance.
        how = "rescale" if cfg.policy == "seed" else "standardize" if init == "he" else "mean"
    return {
        "mean": {"mean": stats["mean"], "std": [1.0] * 3},
        "standardize": {"mean": stats["mean"], "std": stats["std"]},
        "rescale": {"mean": [0.0] * 3, "std": [255.0] * 3},
        "none": None,
    }[how]


def load(path: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    return tf.cast(image, tf.float32)


# --- transforms: (image, stateless seed of shape [2], ...) -> image -----------------


def random_crop(image: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    return tf.image.stateless_random_crop(image, (size, size, 3), seed=seed)


def flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    return tf.image.stateless_random_flip_left_right(image, seed=seed)


def pca_shift(image: tf.Tensor, seed: tf.Tensor, std: float, stats: dict) -> tf.Tensor:
    """The paper's colour augmentation: add sum_i alpha_i * lambda_i * p_i, alpha ~ N(0, std), per image.

    lambda and p are the eigenvalues and eigenvectors of the training set's RGB
    covariance, computed on pixels in [0, 1]; the shift is scaled back to [0, 255].
    """
    alpha = tf.random.stateless_normal([3], seed=seed, stddev=std)
    eigval = tf.constant(stats["pca_eigval"], tf.float32)
    eigvec = tf.constant(stats["pca_eigvec"], tf.float32)  # columns are eigenvectors
    shift = tf.linalg.matvec(eigvec, alpha * eigval) * 255.0
    return tf.clip_by_value(image + shift, 0.0, 255.0)


def affine(image: tf.Tensor, seed: tf.Tensor, cfg: Augment) -> tf.Tensor:
    """The tutorial's random rotation, shift, shear and zoom, as one bilinear warp.

    Drawn as Keras's ImageDataGenerator draws them: rotation and shear angles in
    degrees, uniform in +-rotation and +-shear; a shift of up to `shift` of the
    side on each axis; a zoom factor per axis in [1 - zoom, 1 + zoom]; pixels
    from outside the image repeat the nearest edge.
    """
    u = tf.random.stateless_uniform([6], seed=seed, minval=-1.0, maxval=1.0)
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    theta, shear = u[0] * cfg.rotation * math.pi / 180, u[1] * cfg.shear * math.pi / 180
    tx, ty = u[2] * cfg.shift * size[1], u[3] * cfg.shift * size[0]
    zx, zy = 1.0 + u[4] * cfg.zoom, 1.0 + u[5] * cfg.zoom
    cx, cy = (size[1] - 1) / 2, (size[0] - 1) / 2
    one, zero = tf.ones(()), tf.zeros(())

    def matrix(*rows):
        return tf.reshape(tf.stack(rows), (3, 3))

    # Output pixel -> input pixel, about the image centre (x: column, y: row).
    warp = (
        matrix(one, zero, cx, zero, one, cy, zero, zero, one)
        @ matrix(tf.cos(theta), -tf.sin(theta), zero, tf.sin(theta), tf.cos(theta), zero, zero, zero, one)
        @ matrix(one, zero, tx, zero, one, ty, zero, zero, one)
        @ matrix(one, -tf.sin(shear), zero, zero, tf.cos(shear), zero, zero, zero, one)
        @ matrix(zx, zero, zero, zero, zy, zero, zero, zero, one)
        @ matrix(one, zero, -cx, zero, one, -cy, zero, zero, one)
    )
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.reshape(warp, [-1])[None, :8], output_shape=tf.shape(image)[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")[0]


def centre_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    top, left = (tf.shape(image)[0] - size) // 2, (tf.shape(image)[1] - size) // 2
    return tf.image.crop_to_bounding_box(image, top, left, size, size)


def ten_crops(image: tf.Tensor, size: int) -> tf.Tensor:
    """The paper's test views: centre and four corners, then the same flipped; [10, size, size, 3]."""
    h, w = tf.shape(image)[0] - size, tf.shape(image)[1] - size
    corners = [(0, 0), (0, w), (h, 0), (h, w)]
    crops = tf.stack([centre_crop(image, size)] + [tf.image.crop_to_bounding_box(image, y, x, size, size)
                                                   for y, x in corners])
    return tf.concat([crops, tf.image.flip_left_right(crops)], 0)


def augment(image: tf.Tensor, seed: tf.Tensor, cfg: Augment, stats: dict) -> tf.Tensor:
    """One training view of a canonical image under `cfg.policy`; `seed` is a shape-[2] int tensor."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if cfg.policy == "paper":
        image = random_crop(image, cfg.crop_size, seeds[0]) if cfg.random_crop else centre_crop(image, cfg.crop_size)
        if cfg.flip:
            image = flip(image, seeds[1])
        if cfg.pca_std > 0:
            image = pca_shift(image, seeds[2], cfg.pca_std, stats)
        return image
    if cfg.policy == "seed" and max(cfg.rotation, cfg.shift, cfg.shear, cfg.zoom) > 0:
        image = affine(image, seeds[0], cfg)
    return centre_crop(image, cfg.crop_size)


# --- data sets ----------------------------------------------------------------------


def _examples(index: pd.DataFrame) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((index["path"].tolist(), index["label"].to_numpy(np.int32)))


def training_set(index: pd.DataFrame, cfg: Augment, stats: dict, batch_size: int, seed: int, epochs: int,
                 first_epoch: int = 0, cache: bool = False) -> tf.data.Dataset:
    """Augmented batches for epochs first_epoch + 1 .. epochs, ceil(n / batch_size) per epoch.

    Epoch e's order and views depend only on (seed, e), so a run resumed at epoch e
    sees what an uninterrupted run would. With `cache`, decoded images are kept in
    memory after the first epoch; without, paths are shuffled and images decoded
    each epoch.
    """
    n = len(index)
    examples = _examples(index)
    if cache:
        examples = examples.map(lambda p, y: (load(p), y), num_parallel_calls=AUTOTUNE).cache()

    def epoch(e):
        order = examples.shuffle(n, seed=seed * 1_000_003 + e, reshuffle_each_iteration=False)
        position = tf.data.Dataset.range(n).map(lambda i: tf.stack([tf.constant(seed, tf.int64), e * n + i]))
        views = tf.data.Dataset.zip(order, position).map(
            lambda item, s: (augment(item[0] if cache else load(item[0]), s, cfg, stats), item[1]),
            num_parallel_calls=AUTOTUNE, deterministic=True)
        return views.batch(batch_size)

    return tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch).prefetch(AUTOTUNE)


def validation_set(index: pd.DataFrame, cfg: Augment, batch_size: int) -> tf.data.Dataset:
    """Centre crops and labels."""
    ds = _examples(index).map(lambda p, y: (centre_crop(load(p), cfg.crop_size), y), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def eval_views(index: pd.DataFrame, cfg: Augment, batch_size: int, ten: bool) -> tf.data.Dataset:
    """Per image the centre crop ([1, s, s, 3]) or the paper's ten crops ([10, s, s, 3], centre first)."""

    def views(path):
        image = load(path)
        return ten_crops(image, cfg.crop_size) if ten else centre_crop(image, cfg.crop_size)[None]

    return tf.data.Dataset.from_tensor_slices(index["path"].tolist()).map(
        views, num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(AUTOTUNE)
