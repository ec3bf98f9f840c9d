"""The tf.data input pipeline: canonical images in, augmented crops out.

Images come from the augment step's shards: a shard is read whole, its images
sliced out by the offsets in the index and decoded in parallel (only the crop
window, where a crop is all that is used), so the data set need not fit in memory
and the disk sees large sequential reads. Each epoch reads the shards in a new
order, a few at a time (interleaved), and shuffles their images in windows. Every order
and every training transform is a function of the seed, the epoch and the image's
place in it (stateless random ops), so runs are deterministic and a resumed run
sees the same data as an uninterrupted one. No Python runs per image or per batch
(but the tutorial's warp, which is OpenCV's). The model normalises its own input, so
the pipeline yields RGB pixels in [0, 255] (give or take the colour shift).

Policies (`augment.policy`): `paper`, random crops, horizontal flips and the PCA
colour shift; `seed`, the tutorial's ImageDataGenerator settings (rotation, shift,
shear, zoom) as one warp, then the centre crop; `none`, the centre crop.
Evaluation uses the centre crop, or the paper's ten crops.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from tasks import paths
from tasks.config import Augment
from tasks.errors import StepError

AUTOTUNE = tf.data.AUTOTUNE
CYCLE = 8  # shards read at once while training: each epoch's images come from this many at a time
SHUFFLE_BUFFER = 4096  # images shuffled across those shards
DECODERS = os.cpu_count() or 1  # training views decoded at once


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


def decode_window(data: tf.Tensor, top: tf.Tensor, left: tf.Tensor, size: int) -> tf.Tensor:
    """The size x size window at (top, left) of a JPEG, decoding only the blocks it covers."""
    return tf.io.decode_and_crop_jpeg(data, tf.stack([top, left, size, size]), channels=3)


# --- training transforms ------------------------------------------------------------
# Random draws for all images at once (`draws`); then `view` per image, where the work
# is (decoding only the crop window, which is 20% fewer pixels at 227 of 256), run in
# parallel by tf.data; then `finish` per batch, for what needs the batch (the colour
# shifts, the tutorial's warp). The batch leaves as uint8 pixels and shifts, and
# ColourShift, the training model's first layer, casts and adds them. Seeds are
# stateless, of shape [2].


def warped(cfg: Augment) -> bool:
    """Does the `seed` policy's warp apply (it needs the whole image, and the batch)?"""
    return cfg.policy == "seed" and max(cfg.rotation, cfg.shift, cfg.shear, cfg.zoom) > 0


def draws(count: tf.Tensor, seed: tf.Tensor, cfg: Augment) -> tf.Tensor:
    """Each image's random draws as [count, 3] int32: the crop's top and left (uniform over the image for
    the `paper` policy's random crops, else the centre), and whether to mirror it (1 with probability 1/2
    for `paper` with flips). Drawn for all images at once: a handful of ops, not a handful per image."""
    centre = (cfg.image_size - cfg.crop_size) // 2
    seeds = tf.random.experimental.stateless_split(seed, 2)
    if cfg.policy == "paper" and cfg.random_crop:
        corners = tf.random.stateless_uniform([count, 2], seeds[0], 0, cfg.image_size - cfg.crop_size + 1, tf.int32)
    else:
        corners = tf.fill([count, 2], centre)
    mirrored = tf.random.stateless_uniform([count, 1], seeds[1], 0, 2, tf.int32)
    return tf.concat([corners, mirrored if cfg.policy == "paper" and cfg.flip else tf.zeros_like(mirrored)], 1)


def view(data: tf.Tensor, draw: tf.Tensor, cfg: Augment) -> tf.Tensor:
    """One canonical JPEG's training view before the batch stage, as uint8, by its `draws` row: for `paper`
    and `none`, the crop_size window decoded alone (mirrored if drawn); for `seed`, the whole image (the
    warp needs it)."""
    if warped(cfg):
        return tf.ensure_shape(decode(data), [cfg.image_size, cfg.image_size, 3])
    image = decode_window(data, draw[0], draw[1], cfg.crop_size)
    return tf.cond(draw[2] > 0, lambda: tf.reverse(image, [1]), lambda: image)


def finish(images: tf.Tensor, seed: tf.Tensor, cfg: Augment, stats: dict) -> tuple[tf.Tensor, tf.Tensor]:
    """A batch of views [B, H, W, 3] as training takes it: (uint8 pixels [B, crop, crop, 3], RGB shifts
    [B, 3]): the paper's colour shifts (zero without them), after the tutorial's warp for the `seed` policy."""
    count = tf.shape(images)[0]
    if warped(cfg):
        images = affine(images, seed, cfg, cfg.crop_size)
    if cfg.policy == "paper" and cfg.pca_std > 0:
        return images, colour_shifts(count, seed, cfg.pca_std, stats)
    return images, tf.zeros([count, 3])


def augment(data: tf.Tensor, seed: tf.Tensor, cfg: Augment, stats: dict) -> tf.Tensor:
    """Training views of a batch of canonical JPEGs [B] under `cfg.policy`, as the model sees them: float32
    [B, crop, crop, 3] in [0, 255] (the preview plot shows these)."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    images = tf.map_fn(lambda a: view(a[0], a[1], cfg), (data, draws(tf.shape(data)[0], seeds[0], cfg)),
                       fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    return ColourShift()(*finish(images, seeds[1], cfg, stats))


def colour_shifts(count: tf.Tensor, seed: tf.Tensor, std: float, stats: dict) -> tf.Tensor:
    """The paper's colour augmentation, [count, 3]: per image sum_i alpha_i * lambda_i * p_i, alpha ~ N(0, std).

    lambda and p are the eigenvalues and eigenvectors of the training set's RGB
    covariance, computed on pixels in [0, 1]; the shift is scaled back to [0, 255]
    and added to every pixel of the image (by ColourShift). As in the paper, shifted
    pixels are not clipped (they leave [0, 255] by a few levels).
    """
    alpha = tf.random.stateless_normal([count, 3], seed, stddev=std)
    eigval = tf.constant(stats["pca_eigval"], tf.float32)
    eigvec = tf.constant(stats["pca_eigvec"], tf.float32)  # columns are eigenvectors
    return tf.matmul(alpha * eigval, eigvec, transpose_b=True) * 255.0


class ColourShift(keras.layers.Layer):
    """Where a training batch is finished: uint8 pixels plus each image's RGB shift, as float32.

    The pipeline hands batches over as uint8 pixels and a shift per image, a quarter
    of the bytes of float32 ones; the cast and the add run as the training model's
    first ops, on the accelerator, instead of as two passes over every pixel on the
    host (which halved what two cores delivered).
    """

    def call(self, images, shifts):
        return keras.ops.cast(images, "float32") + shifts[:, None, None, :]


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
    """Augmented batches ((uint8 pixels, RGB shifts), labels) for epochs first_epoch + 1 .. epochs,
    ceil(n / batch_size) per epoch; a model behind ColourShift (`training_model`) takes them.

    Epoch e's order and views depend only on (seed, e), so a run resumed at epoch e
    sees what an uninterrupted run would. Each epoch reads the shards in its own
    order, CYCLE at a time, each in its own order, then shuffled SHUFFLE_BUFFER images at a time; each
    image's view is decoded in parallel, each batch finished in parallel. With
    `cache`, the shards' JPEG bytes stay in memory after the first epoch (a tenth of
    the decoded pixels), and each epoch is a full shuffle of them.
    """
    n, steps = len(index), -(-len(index) // batch_size)
    shards = Shards(index)
    if cache:
        jpegs = shards.in_order().cache()

    def epoch(e):
        epoch_seed = seed * 1_000_003 + e
        if cache:
            order = stateless_shuffle(jpegs, n, epoch_seed)
        else:
            shard_order = tf.random.experimental.stateless_shuffle(
                tf.range(shards.count, dtype=tf.int64), tf.stack([epoch_seed, tf.constant(-1, tf.int64)]))
            order = stateless_shuffle(tf.data.Dataset.from_tensor_slices(shard_order).interleave(
                lambda i: shards.records(i, tf.stack([epoch_seed, i])), cycle_length=min(CYCLE, shards.count),
                num_parallel_calls=AUTOTUNE, deterministic=True), SHUFFLE_BUFFER, epoch_seed)
        drawn = tf.data.Dataset.from_tensor_slices(draws(n, tf.stack([tf.constant(seed, tf.int64), e]), cfg))
        views = tf.data.Dataset.zip(order, drawn).map(lambda record, draw: (view(record[0], draw, cfg), record[1]),
                                                      num_parallel_calls=DECODERS, deterministic=True)
        seeds = tf.data.Dataset.range(steps).map(lambda b: tf.stack([tf.constant(-1 - seed, tf.int64), e * steps + b]))
        return tf.data.Dataset.zip(views.batch(batch_size), seeds).map(
            lambda batch, s: (finish(batch[0], s, cfg, stats), batch[1]), num_parallel_calls=AUTOTUNE,
            deterministic=True)

    return with_options(tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch).prefetch(AUTOTUNE))


def stateless_shuffle(records: tf.data.Dataset, window: int, seed: tf.Tensor) -> tf.data.Dataset:
    """(JPEG bytes, label) records shuffled a window at a time by a stateless draw of the seed. tf.data's own
    shuffle also folds in TensorFlow's global seed, which whatever ran earlier in the process may have set."""
    def permute(w, record):
        order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(record[1])[0]), tf.stack([seed, -2 - w]))
        return tf.gather(record[0], order), tf.gather(record[1], order)

    return records.batch(window).enumerate().map(permute).unbatch()


def with_options(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Each op on one thread: tf.data's parallelism is across images, which is what scales. No autotuning:
    it sometimes settled on one core's worth of decoding for the whole pipeline (rounds of exactly half
    the two-core rate, in either policy, bench/input_pipeline.py); every core decodes instead (DECODERS)."""
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False
    return dataset.with_options(options)


def centre_view(data: tf.Tensor, cfg: Augment) -> tf.Tensor:
    """A canonical JPEG's centre crop as float32, decoded whole: exactly the first of the ten crops and what
    `alexnet predict` sees (a window decoded alone can differ at its edges, where colour is interpolated)."""
    return tf.cast(centre_crop(decode(data), cfg.crop_size), tf.float32)


def validation_set(index: pd.DataFrame, cfg: Augment, batch_size: int) -> tf.data.Dataset:
    """Centre crops and labels, as training takes them: ((uint8 pixels, zero shifts), labels)."""
    crop = lambda data, label: (centre_crop(decode(data), cfg.crop_size), label)  # noqa: E731
    batches = Shards(index).in_order().map(crop, num_parallel_calls=AUTOTUNE).batch(batch_size)
    return with_options(batches.map(lambda x, y: ((x, tf.zeros([tf.shape(x)[0], 3])), y)).prefetch(AUTOTUNE))


def training_model(net: keras.Model) -> keras.Model:
    """`net` (float32 pixels in [0, 255]) behind ColourShift: the model that takes training batches."""
    size = net.input_shape[1]
    pixels = keras.Input((size, size, 3), dtype="uint8", name="pixels")
    shifts = keras.Input((3,), name="shifts")
    return keras.Model([pixels, shifts], net(ColourShift(dtype="float32")(pixels, shifts)), name=f"{net.name}_training")


def eval_views(index: pd.DataFrame, cfg: Augment, batch_size: int, ten: bool) -> tf.data.Dataset:
    """Per image, in shard and offset order, the centre crop ([1, s, s, 3]) or the paper's ten crops
    ([10, s, s, 3], centre first)."""

    def views(data, label):
        return tf.cast(ten_crops(decode(data), cfg.crop_size), tf.float32) if ten else centre_view(data, cfg)[None]

    return with_options(Shards(index).in_order().map(views, num_parallel_calls=AUTOTUNE).batch(batch_size)
                        .prefetch(AUTOTUNE))
