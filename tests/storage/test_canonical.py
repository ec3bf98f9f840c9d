"""Canonical images: large photos decoded at reduced size, colour statistics from a sample of pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hostile import png
from tasks.storage import canonical


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like BGR image: smooth colour regions with fine texture (so scaling shows)."""
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(rng.uniform(0, 255, (6, 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, 12, (h, w, 3)).astype(np.float32)
    return np.clip(coarse + fine, 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 93])[1].tobytes()


@pytest.mark.parametrize(("shape", "size", "factor"), [
    ((375, 500), 256, 1),   # ImageNet's usual photo: shorter side under twice the size, decoded in full
    ((520, 700), 256, 2),   # twice the size or more: half
    ((1100, 1500), 256, 4),
    ((800, 1100), 64, 8),   # never below the size: 800 / 8 = 100
    ((600, 600), 300, 2),
])
def test_a_jpeg_is_decoded_at_the_smallest_scale_that_keeps_its_shorter_side_at_least_the_size(shape, size, factor):
    data = jpeg(textured(*shape))
    assert canonical.reduction(data, size) == factor
    image = canonical.decoded(data, size)
    assert image.shape[:2] == tuple(-(-side // factor) for side in shape) and min(image.shape[:2]) >= size


def test_other_formats_are_decoded_in_full():
    data = png(textured(600, 800))
    assert canonical.reduction(data, 256) == 1 and canonical.decoded(data, 256).shape == (600, 800, 3)


def test_a_reduced_decode_gives_nearly_the_canonical_image_of_a_full_one():
    data = jpeg(textured(1000, 1400, seed=3))
    full = canonical.canonical(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), 256)
    reduced = canonical.canonical(canonical.decoded(data, 256), 256)
    assert reduced.shape == full.shape == (256, 256, 3)
    assert np.abs(reduced.astype(int) - full).mean() < 2.0  # grey levels


def test_colour_statistics_from_sampled_pixels_come_close_to_all_pixels():
    rng = np.random.default_rng(5)
    images = [textured(128, 128, seed) * rng.uniform(0.4, 1.0, 3) for seed in range(40)]
    images = [np.clip(i, 0, 255).astype(np.uint8) for i in images]
    sampled = canonical.colour_stats(sum(canonical.moments(i) for i in images))
    every = np.concatenate([i[..., ::-1].reshape(-1, 3) for i in images]).astype(np.float64)
    assert sampled["pixels"] == 40 * canonical.SAMPLES < len(every)
    np.testing.assert_allclose(sampled["mean"], every.mean(0), atol=1.0)
    np.testing.assert_allclose(sampled["std"], every.std(0), rtol=0.03)
    eigval, eigvec = np.linalg.eigh(np.cov(every.T / 255, bias=True))
    np.testing.assert_allclose(sampled["pca_eigval"], eigval[::-1], rtol=0.1)
    first = np.array(sampled["pca_eigvec"])[:, 0]  # columns are the components
    assert abs(np.dot(first, eigvec[:, -1])) > 0.99  # sign aside, the same first component
