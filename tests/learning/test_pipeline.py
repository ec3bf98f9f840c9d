"""The tf.data input pipeline: each augmentation's effect, determinism, the evaluation views."""

from __future__ import annotations

import hashlib
import math

import cv2
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tasks.config import Augment
from tasks.learning import pipeline
from tasks.storage import shards

STATS = {
    "mean": [120.0, 110.0, 100.0],
    "std": [60.0, 55.0, 50.0],
    "pca_eigval": [0.12, 0.04, 0.01],
    "pca_eigvec": np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0].tolist(),
}
OFF = {"random_crop": False, "flip": False, "pca_std": 0.0, "rotation": 0.0, "shift": 0.0, "shear": 0.0, "zoom": 0.0}


def coordinates(size: int) -> np.ndarray:
    """An image whose pixels say where they are: R = 3 x row, G = 3 x column."""
    rows, cols = np.mgrid[:size, :size]
    return np.stack([3 * rows, 3 * cols, np.full_like(rows, 7)], -1).astype(np.uint8)


def jpeg(image: np.ndarray) -> bytes:
    """RGB pixels as a JPEG as close to lossless as JPEG gets (quality 100, no chroma subsampling)."""
    bgr = np.clip(np.rint(image), 0, 255).astype(np.uint8)[..., ::-1]
    params = [cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    return cv2.imencode(".jpg", bgr, params)[1].tobytes()


def decoded(image: np.ndarray) -> np.ndarray:
    """The image as the pipeline sees it: through the JPEG the augment step would store."""
    return pipeline.decode(jpeg(image)).numpy()


def views(image: np.ndarray, cfg: Augment, count: int, seed: int = 42) -> np.ndarray:
    """`count` training views of one image: a batch of copies of its JPEG through the training transforms."""
    return pipeline.augment(tf.constant([jpeg(image)] * count), tf.constant([seed, 0]), cfg, STATS).numpy()


def test_random_crop_takes_crop_size_windows_at_varying_offsets():
    cfg = Augment(image_size=80, crop_size=72, **{**OFF, "random_crop": True})
    image = decoded(coordinates(80))
    offsets = set()
    for crop in views(coordinates(80), cfg, 30):
        assert crop.shape == (72, 72, 3)
        top, left = round(crop[:, :, 0].mean() / 3 - 35.5), round(crop[:, :, 1].mean() / 3 - 35.5)
        np.testing.assert_array_equal(crop, image[top : top + 72, left : left + 72])  # only the window decoded
        offsets.add((top, left))
    assert len(offsets) > 15 and all(0 <= t <= 8 and 0 <= l <= 8 for t, l in offsets)


def test_flip_mirrors_about_half_of_the_views():
    cfg = Augment(image_size=80, crop_size=72, **{**OFF, "flip": True})
    centre = decoded(coordinates(80))[4:76, 4:76]
    flipped = 0
    for out in views(coordinates(80), cfg, 40):
        if np.array_equal(out, centre[:, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(out, centre)
    assert 10 <= flipped <= 30


def test_pca_colour_shift_has_the_papers_statistics():
    """The offset is p @ (alpha * lambda) * 255 with alpha ~ N(0, std): zero mean, covariance P diag((std lambda 255)^2) P^T."""
    std = 0.1
    cfg = Augment(image_size=80, crop_size=72, **{**OFF, "pca_std": std})
    grey = np.full((80, 80, 3), 128.0)  # far from the clip limits
    shifts = []
    for out in views(grey, cfg, 3000):
        assert np.allclose(out, out[0, 0])  # one offset for the whole image
        shifts.append(out[0, 0] - 128.0)
    shifts = np.array(shifts)
    vec, val = np.array(STATS["pca_eigvec"]), np.array(STATS["pca_eigval"])
    expected = vec @ np.diag((std * val * 255) ** 2) @ vec.T
    assert np.abs(shifts.mean(0)).max() < 0.1 * np.sqrt(expected.diagonal()).max()
    np.testing.assert_allclose(np.cov(shifts.T), expected, atol=0.08 * expected.diagonal().max())
    # Projected on the eigenvectors, the offsets are independent with deviations std * lambda * 255.
    np.testing.assert_allclose((shifts @ vec).std(0), std * val * 255, rtol=0.08)


def test_everything_off_or_policy_none_is_the_centre_crop():
    image = coordinates(80)
    centre = decoded(image)[4:76, 4:76]
    for cfg in (Augment(image_size=80, crop_size=72, **OFF), Augment(image_size=80, crop_size=72, policy="none"),
                Augment(image_size=80, crop_size=72, policy="seed", **OFF)):
        np.testing.assert_array_equal(views(image, cfg, 3), np.stack([centre] * 3))


def blob(size: int, at: tuple[float, float]) -> np.ndarray:
    """A black image with a small bright Gaussian spot at (x, y)."""
    rows, cols = np.mgrid[:size, :size]
    spot = 255 * np.exp(-((cols - at[0]) ** 2 + (rows - at[1]) ** 2) / 4.0)
    return np.repeat(spot[..., None], 3, -1)


def centroid(image: np.ndarray) -> np.ndarray:
    weight = image[..., 0]
    rows, cols = np.mgrid[: image.shape[0], : image.shape[1]]
    return np.array([(cols * weight).sum(), (rows * weight).sum()]) / weight.sum()


SIZE = 96
CENTRE = np.array([(SIZE - 1) / 2] * 2)
SPOT = CENTRE + [20.0, -12.0]


def moved_spots(**knobs) -> np.ndarray:
    cfg = Augment(image_size=SIZE, crop_size=SIZE, policy="seed", **{**OFF, **knobs})
    return np.array([centroid(view) for view in views(blob(SIZE, tuple(SPOT)), cfg, 25)])


def test_seed_rotation_turns_about_the_centre_within_the_range():
    spots = moved_spots(rotation=10)
    radius = np.linalg.norm(SPOT - CENTRE)
    np.testing.assert_allclose(np.linalg.norm(spots - CENTRE, axis=1), radius, atol=0.3)
    turned = np.degrees(np.arctan2(*(spots - CENTRE).T[::-1]) - math.atan2(*(SPOT - CENTRE)[::-1]))
    assert np.abs(turned).max() <= 10.05 and np.abs(turned).max() > 5


def test_seed_shift_moves_by_at_most_the_fraction_of_the_side():
    spots = moved_spots(shift=0.1)
    moved = spots - SPOT
    assert np.abs(moved).max() <= 0.1 * SIZE + 0.3 and np.abs(moved).max() > 5
    assert np.abs(moved[:, 0] - moved[:, 1]).max() > 1  # the two axes move independently


def test_seed_zoom_scales_each_axis_within_the_range():
    spots = moved_spots(zoom=0.2)
    # A zoom factor z maps output to input coordinates: the spot lands at offset / z.
    factors = (SPOT - CENTRE) / (spots - CENTRE)
    assert factors.min() >= 0.8 - 0.02 and factors.max() <= 1.2 + 0.02 and factors.std() > 0.05


def test_seed_shear_slants_columns_by_the_row():
    spots = moved_spots(shear=20)
    # Shear angle s: a point (dx, dy) from the centre lands at (dx + tan(s) dy, dy / cos(s)).
    (dx, dy), out = SPOT - CENTRE, spots - CENTRE
    angle = np.arctan((out[:, 0] - dx) / dy)
    np.testing.assert_allclose(out[:, 1], dy / np.cos(angle), atol=0.3)
    assert np.degrees(np.abs(angle)).max() <= 20.5 and np.degrees(np.abs(angle)).max() > 8


def test_views_are_deterministic_for_a_seed():
    cfg = Augment(image_size=80, crop_size=72, policy="seed")
    image = coordinates(80)
    first = views(image, cfg, 4, seed=5)
    np.testing.assert_array_equal(first, views(image, cfg, 4, seed=5))
    assert not np.array_equal(first, views(image, cfg, 4, seed=6))
    assert all(not np.array_equal(first[0], other) for other in first[1:])  # each image in a batch differs


@pytest.fixture
def images(tmp_path) -> pd.DataFrame:
    """Ten random JPEGs in three shards, indexed as the augment step indexes them."""
    rng = np.random.default_rng(0)
    rows = []
    for part, members in enumerate([range(0, 4), range(4, 7), range(7, 10)]):
        shard = str(tmp_path / f"train-{part}.tar")
        with shards.writing(shard) as out:
            for i in members:
                data = cv2.imencode(".jpg", rng.integers(0, 255, (80, 80, 3), dtype=np.uint8))[1].tobytes()
                rows.append({"shard": shard, "offset": out.add(f"c/{i}.jpg", data), "size": len(data), "label": i % 2})
    return pd.DataFrame(rows)


def batches(ds) -> list[tuple[np.ndarray, np.ndarray]]:
    """(images as the model sees them, labels) per batch."""
    return [(pipeline.ColourShift()(*x).numpy(), y.numpy()) for x, y in ds]


@pytest.mark.parametrize("cache", [False, True])
def test_training_set_is_deterministic_and_resumes_where_it_left_off(images, cache):
    cfg = Augment(image_size=80, crop_size=72)
    full = batches(pipeline.training_set(images, cfg, STATS, 4, seed=7, epochs=3, cache=cache))
    assert len(full) == 3 * 3 and [len(y) for _, y in full[:3]] == [4, 4, 2]
    again = batches(pipeline.training_set(images, cfg, STATS, 4, seed=7, epochs=3, cache=cache))
    resumed = batches(pipeline.training_set(images, cfg, STATS, 4, seed=7, epochs=3, first_epoch=2, cache=cache))
    for (a, la), (b, lb) in zip(full, again):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    for (a, _), (b, _) in zip(full[6:], resumed):
        np.testing.assert_array_equal(a, b)
    epochs = [np.concatenate([y for _, y in full[e * 3 : e * 3 + 3]]) for e in range(3)]
    assert all(sorted(e) == sorted(images["label"]) for e in epochs)  # each epoch sees every image once
    first = np.concatenate([x for x, _ in full[:3]])
    second = np.concatenate([x for x, _ in full[3:6]])
    assert not np.array_equal(first, second)  # a new order and new views every epoch


def test_ten_crops_are_corners_and_centre_then_flipped():
    full = coordinates(80)
    crops = pipeline.ten_crops(tf.constant(full), 72).numpy()
    assert crops.shape == (10, 72, 72, 3)
    expected = [full[4:76, 4:76], full[:72, :72], full[:72, 8:], full[8:, :72], full[8:, 8:]]
    for got, want in zip(crops[:5], expected):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(crops[5:], crops[:5, :, ::-1])


def test_eval_views_yield_one_or_ten_views_per_image(images):
    cfg = Augment(image_size=80, crop_size=72)
    ten = np.concatenate([b.numpy() for b in pipeline.eval_views(images, cfg, 4, ten=True)])
    one = np.concatenate([b.numpy() for b in pipeline.eval_views(images, cfg, 4, ten=False)])
    assert ten.shape == (10, 10, 72, 72, 3) and one.shape == (10, 1, 72, 72, 3)
    np.testing.assert_array_equal(ten[:, 0], one[:, 0])  # the centre crop comes first


@pytest.mark.parametrize("policy, normalize, init, expected", [
    ("paper", "auto", "paper", {"mean": STATS["mean"], "std": [1.0] * 3}),
    ("none", "auto", "caffe", {"mean": STATS["mean"], "std": [1.0] * 3}),
    ("paper", "auto", "he", {"mean": STATS["mean"], "std": STATS["std"]}),
    ("seed", "auto", "he", {"mean": [0.0] * 3, "std": [255.0] * 3}),
    ("paper", "mean", "he", {"mean": STATS["mean"], "std": [1.0] * 3}),
    ("seed", "none", "he", None),
])
def test_normalisation_follows_the_policy_and_the_initialisation(policy, normalize, init, expected):
    assert pipeline.normalisation(Augment(policy=policy, normalize=normalize), STATS, init) == expected


def reference_images(folder) -> pd.DataFrame:
    """Ten JPEGs made by TensorFlow's encoder (pinned, so the same bytes everywhere) in two shards."""
    rng = np.random.default_rng(1)
    rows = []
    for part, members in enumerate([range(0, 6), range(6, 10)]):
        shard = str(folder / f"train-{part}.tar")
        with shards.writing(shard) as out:
            for i in members:
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(10, 0).repeat(10, 1)
                data = tf.io.encode_jpeg(pixels, quality=90).numpy()
                rows.append({"shard": shard, "offset": out.add(f"c/{i}.jpg", data), "size": len(data), "label": i})
    return pd.DataFrame(rows)


# What training_set gives for reference_images(), seed 7, batches of 4, the paper policy at 72 of 80: recorded when
# the pipeline moved to shards (each epoch reads shards in its own order through a shuffle buffer, decodes only
# the crop window, draws crops and flips per epoch, and hands batches over as uint8 pixels and colour shifts);
# recorded again when the shuffles became stateless (tf.data's shuffle folded in TensorFlow's global seed).
# A change of these is a change of what training sees: make it on purpose, say why, and record the new reference.
REFERENCE_LABELS = [[2, 7, 0, 1], [4, 3, 9, 5], [6, 8], [9, 3, 2, 4], [7, 8, 0, 6], [5, 1]]
REFERENCE_PIXELS = "84de65fc5eec60b97ef369ff68417c9677ab3d13eec6dd33f417b2eab20193d3"
REFERENCE_SHIFTS = [[-0.32, 0.14, -4.18], [-0.6, -0.64, -3.31], [0.03, 0.35, 0.62], [-0.94, -1.98, -0.61],
                    [0.1, -1.39, 2.87], [-0.36, -0.82, -5.19]]


@pytest.mark.parametrize("global_seed", [None, 12345])
def test_the_training_batches_are_the_recorded_reference(tmp_path, global_seed):
    # TensorFlow's global seed is whatever ran earlier in the process left (training sets it): it must not matter
    tf.random.set_seed(global_seed)
    cfg = Augment(image_size=80, crop_size=72)
    labels, pixels, shifts = [], hashlib.sha256(), []
    for (x, shift), y in pipeline.training_set(reference_images(tmp_path), cfg, STATS, 4, seed=7, epochs=2):
        labels.append(y.numpy().tolist())
        pixels.update(x.numpy().tobytes())
        shifts.append(shift.numpy()[0].round(2).tolist())
    assert (labels, pixels.hexdigest()) == (REFERENCE_LABELS, REFERENCE_PIXELS)
    np.testing.assert_allclose(shifts, REFERENCE_SHIFTS, atol=0.02)
