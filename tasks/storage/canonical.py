"""Canonical images: the shorter side resized to `image_size`, the centre square kept, as JPEG.

The augment step (`tasks.augment`) plans the work in chunks, one per output shard;
this module is what a chunk needs: it reads its images from the download's shards
(or from the sources it indexed in place), decodes each once (a JPEG twice the size
or more at a half, quarter or eighth of it, as libjpeg scales while decoding), makes
them canonical, writes them as one shard in a fixed order, and adds up the colour
moments of a sample of the training images' pixels. It imports OpenCV and NumPy only (no
TensorFlow, pandas or Prefect), so the worker processes that run chunks start fast.

A chunk records what it made (its index rows, its colour moments, the shard's file
metadata) under .alexnet/augment/<key>.json once its shard is in place; the key
covers the chunk's images and where they are, the image size and this code, so a
killed or re-parametrised run redoes only the chunks whose output could differ.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tasks import paths
from tasks.errors import StepError
from tasks.storage import files, jpeg, shards

RECORDS_DIR = Path(paths.STATE) / "augment"
QUALITY = 95
# Pixels of each training image the colour statistics are taken from: a fixed, seeded sample
# of positions. Over a data set that is millions of pixels, and the mean, deviation and
# principal components come within a small fraction of a grey level of all pixels' (bench/prep.py
# measures how close); a float64 copy of every pixel cost as much as resizing the image.
SAMPLES = 4096
# libjpeg scales while decoding (DCT scaling), by these factors, for the cost of the smaller image.
SCALED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
          8: cv2.IMREAD_REDUCED_COLOR_8}
# An image row of a chunk: (sha256, class, source shard, member, offset, size).
ImageRow = tuple[str, str, str, str, int, int]


@dataclass(frozen=True)
class Chunk:
    """The images of one output shard, in the order they are stored."""

    subset: str
    part: int
    parts: int
    image_size: int
    key: str
    rows: tuple[ImageRow, ...]

    @property
    def shard(self) -> str:
        return f"{paths.AUGMENTED}/{self.subset}-{self.part:05d}-of-{self.parts:05d}{shards.SUFFIX}"

    @property
    def record(self) -> Path:
        return RECORDS_DIR / f"{self.key}.json"


def reduction(data: bytes, size: int) -> int:
    """The largest factor (1, 2, 4 or 8) a JPEG can be scaled down by while decoding and keep its
    shorter side at least `size`; 1 for anything else."""
    found = jpeg.frame(data) if data[:2] == b"\xff\xd8" else None
    shorter = min(found[:2]) if found else 0
    return next((factor for factor in (8, 4, 2) if shorter // factor >= size), 1)


def decoded(data: bytes, size: int) -> np.ndarray | None:
    """An image as BGR, decoded at the smallest scale that keeps its shorter side at least `size`
    (a photo twice that size or more costs a quarter of its full decode, or less)."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), SCALED[reduction(data, size)])


def canonical(image: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to `size`, then the centre `size` x `size` square."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    image = cv2.resize(image, (max(size, round(w * scale)), max(size, round(h * scale))), interpolation=interpolation)
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


@functools.cache
def _sampled(pixels: int) -> np.ndarray:
    """The positions sampled from every image of `pixels` pixels: the same for each, drawn once from a fixed seed."""
    return np.sort(np.random.default_rng(0).choice(pixels, min(SAMPLES, pixels), replace=False))


def moments(bgr: np.ndarray) -> np.ndarray:
    """[n, sum of RGB, sum of RGB outer products] of an image's sampled pixels in [0, 1]: 13 numbers that add up."""
    flat = bgr.reshape(-1, 3)
    pixels = flat[_sampled(len(flat)), ::-1].astype(np.float64) / 255.0
    return np.concatenate([[len(pixels)], pixels.sum(0), (pixels.T @ pixels).ravel()])


def colour_stats(total: np.ndarray) -> dict:
    """Mean, standard deviation and principal components of the RGB pixels the moments add up."""
    n, mean = total[0], total[1:4] / total[0]
    cov = total[4:].reshape(3, 3) / n - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = eigval.argsort()[::-1]
    return {
        "mean": (mean * 255).tolist(),
        "std": (np.sqrt(np.diag(cov)) * 255).tolist(),
        "pca_eigval": eigval[order].tolist(),
        "pca_eigvec": eigvec[:, order].tolist(),
        "pixels": int(n),
    }


def done(chunk: Chunk, workdir: Path) -> dict | None:
    """What an earlier run of this chunk made, if its shard is still the file it wrote."""
    record = workdir / chunk.record
    if not record.is_file():
        return None
    made = files.read_json(record)
    try:
        st = os.stat(workdir / chunk.shard)
    except OSError:
        return None
    return made if made.get("file") == [st.st_size, st.st_mtime_ns, st.st_ino] else None


def augment_chunk(cfg, chunk: Chunk, workdir: str | Path, on_item: Callable[[int], None] | None = None) -> dict:
    """Make one chunk's canonical images into its shard; its index rows and colour moments."""
    workdir = Path(workdir)
    if made := done(chunk, workdir):
        if on_item:
            on_item(len(chunk.rows))
        return made
    train = chunk.subset == "train"

    def prepare(row: ImageRow) -> tuple[bytes, np.ndarray | None]:
        _, _, shard, member, offset, size = row
        image = decoded(reader.read(workdir / shard, offset, size), chunk.image_size)
        if image is None:
            raise StepError(f"cannot decode {member} in {shard}; rerun download")
        square = canonical(image, chunk.image_size)
        ok, data = cv2.imencode(".jpg", square, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        return data.tobytes(), moments(square) if train else None

    index, total = [], np.zeros(13)
    with shards.Reader() as reader, ThreadPoolExecutor(os.cpu_count() or 1) as pool, \
            shards.writing(workdir / chunk.shard) as out:
        # Decoded and encoded on threads (OpenCV lets go of the interpreter lock), stored in order.
        for row, (data, moment) in zip(chunk.rows, pool.map(prepare, chunk.rows)):
            sha256, cls = row[:2]
            member = f"{cls}/{sha256}.jpg"
            index.append([chunk.shard, out.add(member, data), len(data), member, cls, chunk.subset, sha256])
            if moment is not None:
                total += moment
            if on_item:
                on_item(1)
    st = os.stat(workdir / chunk.shard)
    made = {"items": len(index), "index": index, "moments": total.tolist() if train else None,
            "file": [st.st_size, st.st_mtime_ns, st.st_ino]}
    files.write_json(workdir / chunk.record, made)
    return made
