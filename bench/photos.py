"""Photo-sized JPEGs for the benchmarks, and the ILSVRC-2012 archives made of them.

ImageNet's photos average about 470x400 pixels and 110 KB, and decoding them is most
of the data steps' work, so small generated images (2.5-20 KB) say little about the
real cost. These are scenes from the demo source's backgrounds and clutter with
texture at several scales (as foliage, fur or fabric give), in ImageNet's common
sizes (a few large ones among them), at JPEG quality 93: they compress like photos,
to about 80-150 KB. A set of distinct photos is replicated to any count with
distinct bytes (a comment segment numbers each copy), so digests differ while the
decoding work stays that of a photo.
"""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks import synsets  # noqa: E402
from tasks.acquire.demo_images import _background, _clutter  # noqa: E402

# (width, height) and how often: ImageNet's photos are mostly 500 pixels on the longer side.
SIZES = [(500, 375), (375, 500), (500, 333), (500, 400), (400, 400), (500, 500), (333, 500), (640, 480),
         (1024, 768)]
WEIGHTS = [0.33, 0.12, 0.15, 0.10, 0.08, 0.08, 0.06, 0.05, 0.03]
QUALITY = 93
OCTAVES = ((64, 30), (16, 20), (4, 16), (2, 12), (1, 9))  # (cell in pixels, amplitude)


def photo(index: int) -> np.ndarray:
    """A textured scene, BGR, in one of ImageNet's common sizes."""
    rng = np.random.default_rng([7, index])
    w, h = SIZES[rng.choice(len(SIZES), p=WEIGHTS)]
    img = _background(rng, h, w).astype(np.float32)
    _clutter(rng, img, int(rng.integers(20, 60)))
    for cell, amplitude in OCTAVES:
        noise = rng.normal(0, amplitude, (h // cell + 2, w // cell + 2, 3)).astype(np.float32)
        if cell > 1:
            noise = cv2.resize(noise, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)
        img += noise[cell : cell + h, cell : cell + w] if cell > 1 else noise[:h, :w]
    return cv2.GaussianBlur(np.clip(img, 0, 255).astype(np.uint8), (0, 0), 0.5)


def jpegs(distinct: int) -> list[bytes]:
    return [cv2.imencode(".jpg", photo(i), [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1].tobytes() for i in range(distinct)]


def copy(data: bytes, n: int) -> bytes:
    """The JPEG with a comment segment numbering the copy right after its start marker: other bytes, same pixels."""
    text = f"copy {n}".encode()
    return data[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + data[2:]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def ilsvrc(folder: Path, photos: list[bytes], images: int, per_class: int,
           val_fraction: float = 0.02) -> dict[str, dict]:
    """ILSVRC2012_img_train.tar (a tar of `<wnid>.tar`, each of `<wnid>_<n>.JPEG`), ILSVRC2012_img_val.tar and
    LOC_val_solution.csv in `folder`, `images` in all; the classes as params.yaml names them."""
    folder.mkdir(parents=True, exist_ok=True)
    wnids = list(synsets.names())[: -(-images // per_class)]
    counter = iter(range(images))
    val_every = round(1 / val_fraction)
    val: list[tuple[str, str, bytes]] = []

    def next_image() -> tuple[int, bytes] | None:
        n = next(counter, None)
        return None if n is None else (n, copy(photos[n % len(photos)], n))

    with tarfile.open(folder / "ILSVRC2012_img_train.tar", "w", format=tarfile.USTAR_FORMAT) as train:
        for wnid in wnids:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for i in range(per_class):
                    if (got := next_image()) is None:
                        break
                    n, data = got
                    if n % val_every == val_every - 1:
                        val.append((f"ILSVRC2012_val_{len(val) + 1:08d}", wnid, data))
                    else:
                        _add(tar, f"{wnid}_{i}.JPEG", data)
            _add(train, f"{wnid}.tar", inner.getvalue())
    with tarfile.open(folder / "ILSVRC2012_img_val.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, _, data in val:
            _add(tar, f"{name}.JPEG", data)
    (folder / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(
        f"{name},{wnid} 1 1 10 10\n" for name, wnid, _ in val))
    return {wnid: {"wnid": wnid} for wnid in wnids}
