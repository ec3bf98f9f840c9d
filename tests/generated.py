"""Small generated image data sets, prepared as the augment step leaves them.

Six classes told apart by pattern only (colours, scale and phase are random), and
unchanged by a horizontal flip, so the paper's augmentation keeps them apart.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from tasks import augment, paths, split
from tasks.params import validate
from tasks.storage import files, shards

PATTERNS = ("horizontal", "vertical", "diagonal", "checks", "rings", "dots")


def pattern(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size].astype(np.float64)
    period, phase = rng.uniform(7, 12), rng.uniform(0, 2 * np.pi)
    wave = lambda t: np.sin(2 * np.pi * t / period + phase) > 0  # noqa: E731
    sign = rng.choice([-1, 1])
    cy, cx = rng.uniform(0.3 * size, 0.7 * size, 2)
    mask = {
        "horizontal": lambda: wave(rows),
        "vertical": lambda: wave(cols),
        "diagonal": lambda: wave((rows + sign * cols) / np.sqrt(2)),
        "checks": lambda: wave(rows) ^ wave(cols),
        "rings": lambda: wave(np.hypot(rows - cy, cols - cx)),
        "dots": lambda: (np.hypot((rows + phase) % period - period / 2, (cols + phase) % period - period / 2)
                         < period / 4),
    }[kind]()
    fg, bg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    while np.abs(fg - bg).sum() < 150:  # keep the pattern visible
        fg, bg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = np.where(mask[..., None], fg, bg) + rng.normal(0, 12, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def prepare(workdir: Path, params: dict, classes: int = 6, train: int = 30, validation: int = 10,
            seed: int = 0) -> Path:
    """Write a shard of pattern images, data/split.csv and run the augment step; returns `workdir`."""
    rng = np.random.default_rng(seed)
    return _prepared(workdir, params, PATTERNS[:classes], train, validation, lambda kind: pattern(kind, 96, rng))


def prepare_random(workdir: Path, params: dict, classes: list[str], train: int = 1, validation: int = 1) -> Path:
    """As prepare(), with small random images under any class names (for many classes)."""
    rng = np.random.default_rng(0)
    return _prepared(workdir, params, classes, train, validation,
                     lambda _: rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))


def _prepared(workdir: Path, params: dict, classes, train: int, validation: int, picture) -> Path:
    rows = []
    shard = f"{paths.IMAGES}/generated{shards.SUFFIX}"
    with shards.writing(workdir / shard) as out:
        for kind in classes:
            for i in range(train + validation):
                data = cv2.imencode(".png", picture(kind))[1].tobytes()
                digest, member = files.sha256_bytes(data), f"{kind}/{files.sha256_bytes(data)}.png"
                rows.append({"sha256": digest, "class": kind, "subset": "train" if i < train else "validation",
                             "shard": shard, "member": member, "offset": out.add(member, data), "size": len(data)})
    files.write_csv(workdir / paths.SPLIT, pd.DataFrame(rows, columns=split.COLUMNS))
    augment.run(validate(params), workdir)
    return workdir
