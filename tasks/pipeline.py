"""The tf.data input pipeline: canonical images in, augmented crops out.

Images come from the augment step's shards: a shard is read whole, its images
sliced out by the offsets in the index and decoded in parallel, so the data set need
not fit in memory and the disk sees large sequential reads. Each epoch reads the
shards in a new order, a few at a time (interleaved), and shuffles images in a
buffer. Every order and every training transform is a function of the seed and
the epoch (transforms: of a batch and a stateless seed), so runs are deterministic
and a resumed run sees the same data as an uninterrupted one. The model normalises
its own input, so the pipeline yields RGB pixels in [0, 255] (give or take the
colour shift).

Policies (`augment.policy`): `paper`, random crops, horizontal flips and the PCA
colour shift; `seed`, the tutorial's ImageDataGenerator settings (rotation, shift,
shear, zoom) as one warp, then the centre crop; `none`, the centre crop.
Evaluation uses the centre crop, or the paper's ten crops.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tensorflow as tf

from tasks import paths
from tasks.config import Augment
from tasks.step import StepError

AUTOTUNE = tf.data.AUTOTUNE
CYCLE = 8  # shards read at once while training: each epoch's images come from this many at a time
SHUFFLE_BUFFER = 4096  # images shuffled across those shards


def read_prepared(workdir: Path) -> tuple[pd.DataFrame, dict]:
    """The augment step's index (absolute shard paths, in shard and offset order) and colour statistics."""
    index_path, stats_path = workdir / paths.AUGMENT_INDEX, workdir / paths.STATS
    for path in (index_path, stats_path):
        if not path.is_file():
            raise StepError(f"missing {path}: run the augment step first")
    index = pd.read_csv(index_path, keep_default_na=False, dtype={"shard": "category", "member": str,
                                                                  "class": "category", "subset": "category"})
    index["shard"] = index["shard"].cat.rename_categories(lambda shard: str(workdir / shard))
    return index.sort_values(["shard", "offset"], kind="stable").reset_index(drop=True), \
        json.loads(stats_path.read_text())


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


def decode(data: tf.Tensor) -> tf.Tensor:
    """A canonical image's JPEG bytes as uint8 RGB (four times smaller than float32 in batches and caches)."""
    return tf.io.decode_jpeg(data, channels=3)


# --- training transforms: a batch [B, H, W, 3] and a stateless seed of shape [2] ----
# Working on whole batches makes a handful of ops per batch, not per image: the
# tf.data runtime's cost per op dominated when each image was augmented alone.
# Crops and flips slice each image in a map_fn: about 3x faster here than gathers.


def random_crop(images: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    """A size x size window of each image, at a uniformly random position."""
    b, h, w = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    top = tf.random.stateless_uniform([b], seeds[0], 0, h - size + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([b], seeds[1], 0, w - size + 1, dtype=tf.int32)
    return tf.map_fn(lambda a: a[0][a[1] : a[1] + size, a[2] : a[2] + size], (images, top, left),
                     fn_output_signature=images.dtype)


def flip(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Each image mirrored left-right with probability 1/2."""
    mirrored = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < 0.5
    return tf.map_fn(lambda a: tf.cond(a[1], lambda: tf.reverse(a[0], [1]), lambda: a[0]), (images, mirrored),
                     fn_output_signature=images.dtype)


def pca_shift(images: tf.Tensor, seed: tf.Tensor, std: float, stats: dict) -> tf.Tensor:
    """The paper's colour augmentation: add sum_i alpha_i * lambda_i * p_i, alpha ~ N(0, std), per image.

    lambda and p are the eigenvalues and eigenvectors of the training set's RGB
    covariance, computed on pixels in [0, 1]; the shift is scaled back to [0, 255].
    As in the paper, shifted pixels are not clipped (they leave [0, 255] by a few levels).
    """
    alpha = tf.random.stateless_normal([tf.shape(images)[0], 3], seed, stddev=std)
    eigval = tf.constant(stats["pca_eigval"], tf.float32)
    eigvec = tf.constant(stats["pca_eigvec"], tf.float32)  # columns are eigenvectors
    shift = tf.matmul(alpha * eigval, eigvec, transpose_b=True) * 255.0
    return images + shift[:, None, None, :]


def affine(images: tf.Tensor, seed: tf.Tensor, cfg: Augment, size: int) -> tf.Tensor:
    """The tutorial's random rotation, shift, shear and zoom as one bilinear warp per image;
    returns the centre size x size window of the warped images (only that is computed).

    Drawn as Keras's ImageDataGenerator draws them: rotation and shear angles in
    degrees, uniform in +-rotation and +-shear; a shift of up to `shift` of the
    side on each axis; a zoom factor per axis in [1 - zoom, 1 + zoom]; pixels
    from outside the image repeat the nearest edge.
    """
    b = tf.shape(images)[0]
    u = tf.unstack(tf.random.stateless_uniform([6, b], seed, minval=-1.0, maxval=1.0))
    shape = tf.cast(tf.shape(images)[1:3], tf.float32)
    theta, shear = u[0] * cfg.rotation * math.pi / 180, u[1] * cfg.shear * math.pi / 180
    tx, ty = u[2] * cfg.shift * shape[1], u[3] * cfg.shift * shape[0]
    zx, zy = 1.0 + u[4] * cfg.zoom, 1.0 + u[5] * cfg.zoom
    cx, cy = (shape[1] - 1) / 2, (shape[0] - 1) / 2
    one, zero = tf.ones([b]), tf.zeros([b])

    def matrix(*entries):  # [B, 3, 3] from nine entries, each a scalar or [B]
        return tf.reshape(tf.stack([e + zero for e in entries], -1), [b, 3, 3])

    # Output pixel -> input pixel, about the image centre (x: column, y: row); the
    # last factor places the output window at the centre.
    top, left = tf.cast((tf.shape(images)[1] - size) // 2, tf.float32), tf.cast((tf.shape(images)[2] - size) // 2,
                                                                                tf.float32)
    warp = (
        matrix(one, zero, cx, zero, one, cy, zero, zero, one)
        @ matrix(tf.cos(theta), -tf.sin(theta), zero, tf.sin(theta), tf.cos(theta), zero, zero, zero, one)
        @ matrix(one, zero, tx, zero, one, ty, zero, zero, one)
        @ matrix(one, -tf.sin(shear), zero, zero, tf.cos(shear), zero, zero, zero, one)
        @ matrix(zx, zero, zero, zero, zy, zero, zero, zero, one)
        @ matrix(one, zero, left - cx, zero, one, top - cy, zero, zero, one)
    )

    def warp_all(batch: np.ndarray, matrices: np.ndarray) -> np.ndarray:
        flags, border = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, cv2.BORDER_REPLICATE
        return np.stack([cv2.warpAffine(image, m[:2], (size, size), flags=flags, borderMode=border)
                         for image, m in zip(batch, matrices)])

    # OpenCV's warp: measured 4.5x faster than TensorFlow's ImageProjectiveTransformV3
    # on CPU (docs/benchmarks.md); the random parameters stay stateless TF ops.
    warped = tf.numpy_function(warp_all, [images, warp], images.dtype, stateful=False)
    return tf.ensure_shape(warped, [None, size, size, 3])


def centre_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """The centre size x size window of an image [H, W, 3] or of each in a batch [B, H, W, 3]."""
    top, left = (tf.shape(image)[-3] - size) // 2, (tf.shape(image)[-2] - size) // 2
    return image[..., top : top + size, left : left + size, :]


def ten_crops(image: tf.Tensor, size: int) -> tf.Tensor:
    """The paper's test views of one image: centre and four corners, then the same flipped; [10, size, size, 3]."""
    h, w = tf.shape(image)[0] - size, tf.shape(image)[1] - size
    corners = [(0, 0), (0, w), (h, 0), (h, w)]
    crops = tf.stack([centre_crop(image, size)] + [image[y : y + size, x : x + size] for y, x in corners])
    return tf.concat([crops, tf.reverse(crops, [2])], 0)


def augment(images: tf.Tensor, seed: tf.Tensor, cfg: Augment, stats: dict) -> tf.Tensor:
    """Training views of a batch of canonical uint8 images under `cfg.policy`, as float32 in [0, 255]."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if cfg.policy == "paper":  # crop and flip move uint8 pixels: cheaper before the cast
        images = random_crop(images, cfg.crop_size, seeds[0]) if cfg.random_crop else centre_crop(images, cfg.crop_size)
        if cfg.flip:
            images = flip(images, seeds[1])
        images = tf.cast(images, tf.float32)
        return pca_shift(images, seeds[2], cfg.pca_std, stats) if cfg.pca_std > 0 else images
    if cfg.policy == "seed" and max(cfg.rotation, cfg.shift, cfg.shear, cfg.zoom) > 0:
        return tf.cast(affine(images, seeds[0], cfg, cfg.crop_size), tf.float32)
    return tf.cast(centre_crop(images, cfg.crop_size), tf.float32)


# --- data sets ----------------------------------------------------------------------


class Shards:
    """An index's images grouped by shard, as tensors a tf.data function can look up."""

    def __init__(self, index: pd.DataFrame):
        ordered = index.sort_values(["shard", "offset"], kind="stable")
        shard = ordered["shard"].astype(str).to_numpy()
        starts = np.flatnonzero(np.r_[True, shard[1:] != shard[:-1]])
        self.count = len(starts)
        self.paths = tf.constant(shard[starts] if len(shard) else np.array([], str))
        self.starts = tf.constant(starts, tf.int64)
        self.sizes = tf.constant(np.diff(np.r_[starts, len(shard)]), tf.int64)
        self.offsets = tf.constant(ordered["offset"].to_numpy(np.int64))
        self.lengths = tf.constant(ordered["size"].to_numpy(np.int64))
        self.labels = tf.constant(ordered["label"].to_numpy(np.int32))

    def records(self, i: tf.Tensor, order_seed: tf.Tensor | None = None) -> tf.data.Dataset:
        """Shard i's (JPEG bytes, label), from one read of the whole file; in a seeded order if given."""
        contents = tf.io.read_file(self.paths[i])
        rows = tf.range(self.starts[i], self.starts[i] + self.sizes[i])
        if order_seed is not None:
            rows = tf.random.experimental.stateless_shuffle(rows, order_seed)
        return tf.data.Dataset.from_tensor_slices(rows).map(
            lambda r: (tf.strings.substr(contents, self.offsets[r], self.lengths[r]), self.labels[r]))

    def in_order(self) -> tf.data.Dataset:
        """Every (JPEG bytes, label), shard by shard in offset order: the index's order."""
        images = int(self.offsets.shape[0])  # told to tf.data, so that Keras knows where a pass ends
        return tf.data.Dataset.range(self.count).flat_map(self.records).apply(
            tf.data.experimental.assert_cardinality(images))


def training_set(index: pd.DataFrame, cfg: Augment, stats: dict, batch_size: int, seed: int, epochs: int,
                 first_epoch: int = 0, cache: bool = False) -> tf.data.Dataset:
    """Augmented batches for epochs first_epoch + 1 .. epochs, ceil(n / batch_size) per epoch.

    Epoch e's order and views depend only on (seed, e), so a run resumed at epoch e
    sees what an uninterrupted run would. Each epoch reads the shards in its own
    order, CYCLE at a time, each in its own order, through a shuffle buffer; images
    are decoded and batches augmented in parallel. With `cache`, decoded images stay
    in memory after the first epoch, and each epoch is a full shuffle of them.
    """
    n, steps = len(index), -(-len(index) // batch_size)
    shards = Shards(index)
    decode_pair = lambda data, label: (decode(data), label)  # noqa: E731
    if cache:
        examples = shards.in_order().map(decode_pair, num_parallel_calls=AUTOTUNE).cache()

    def epoch(e):
        epoch_seed = seed * 1_000_003 + e
        if cache:
            order = examples.shuffle(n, seed=epoch_seed, reshuffle_each_iteration=False)
        else:
            order = tf.data.Dataset.range(shards.count).shuffle(shards.count, seed=epoch_seed).interleave(
                lambda i: shards.records(i, tf.stack([epoch_seed, i])), cycle_length=min(CYCLE, shards.count),
                num_parallel_calls=AUTOTUNE, deterministic=True)
            order = order.shuffle(SHUFFLE_BUFFER, seed=epoch_seed).map(
                decode_pair, num_parallel_calls=AUTOTUNE, deterministic=True)
        seeds = tf.data.Dataset.range(steps).map(lambda b: tf.stack([tf.constant(seed, tf.int64), e * steps + b]))
        return tf.data.Dataset.zip(order.batch(batch_size), seeds).map(
            lambda batch, s: (augment(batch[0], s, cfg, stats), batch[1]),
            num_parallel_calls=AUTOTUNE, deterministic=True)

    return tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch).prefetch(AUTOTUNE)


def validation_set(index: pd.DataFrame, cfg: Augment, batch_size: int) -> tf.data.Dataset:
    """Centre crops and labels."""
    crop = lambda data, label: (tf.cast(centre_crop(decode(data), cfg.crop_size), tf.float32), label)  # noqa: E731
    return Shards(index).in_order().map(crop, num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(AUTOTUNE)


def eval_views(index: pd.DataFrame, cfg: Augment, batch_size: int, ten: bool) -> tf.data.Dataset:
    """Per image, in shard and offset order, the centre crop ([1, s, s, 3]) or the paper's ten crops
    ([10, s, s, 3], centre first)."""

    def views(data, label):
        image = decode(data)
        crops = ten_crops(image, cfg.crop_size) if ten else centre_crop(image, cfg.crop_size)[None]
        return tf.cast(crops, tf.float32)

    return Shards(index).in_order().map(views, num_parallel_calls=AUTOTUNE).batch(batch_size).prefetch(AUTOTUNE)
