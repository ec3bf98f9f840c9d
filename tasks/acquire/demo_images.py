"""Deterministic generated photos of ships and bicycles for the embedded demo source.

Each image is a function of (kind, index) only. Backgrounds, clutter, colours,
scale, position, orientation and noise are drawn independently of the class, so
the only reliable cue is the object's shape: a learnable task, not two patterns.
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np

KINDS = ("ship", "bicycle")


def _rng(kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(kind.encode()), index])


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(lo, hi, size=3))


def _gradient(h: int, w: int, top, bottom) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    column = (1 - t) * np.array(top, np.float32) + t * np.array(bottom, np.float32)
    return np.repeat(column, w, axis=1)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    style = rng.integers(4)
    if style == 0:  # horizon: sky over water or land
        horizon = int(h * rng.uniform(0.3, 0.7))
        img = np.empty((h, w, 3), np.float32)
        img[:horizon] = _gradient(horizon, w, _colour(rng, 120), _colour(rng, 80))
        img[horizon:] = _gradient(h - horizon, w, _colour(rng, 40, 200), _colour(rng, 0, 160))
        for _ in range(rng.integers(0, 12)):  # waves or furrows
            y = int(rng.integers(horizon, h))
            x = int(rng.integers(0, w))
            cv2.line(img, (x, y), (x + int(rng.integers(10, 60)), y), _colour(rng), 1)
    elif style == 1:  # indoor: wall and floor
        floor = int(h * rng.uniform(0.55, 0.85))
        img = np.empty((h, w, 3), np.float32)
        img[:floor] = _colour(rng, 60)
        img[floor:] = _colour(rng, 0, 200)
    elif style == 2:  # smooth blotches
        small = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.float32)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    else:  # street: buildings against the sky
        img = _gradient(h, w, _colour(rng, 100), _colour(rng, 60))
        x = 0
        while x < w:
            bw = int(rng.integers(w // 10, w // 4))
            top = int(rng.integers(h // 5, h // 2))
            cv2.rectangle(img, (x, top), (x + bw, h), _colour(rng, 0, 220), -1)
            x += bw
    return np.clip(img, 0, 255).astype(np.uint8)


def _clutter(rng: np.random.Generator, img: np.ndarray, count: int) -> None:
    h, w = img.shape[:2]
    for _ in range(count):
        colour, thick = _colour(rng), int(rng.integers(1, 4))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(rng.integers(4, max(6, w // 6)))
        shape = rng.integers(4)
        if shape == 0:
            cv2.rectangle(img, (x, y), (x + size, y + int(size * rng.uniform(0.3, 2))), colour, -1)
        elif shape == 1:
            axes = (size // 2 + 1, int(size * rng.uniform(0.2, 0.6)) + 1)
            cv2.ellipse(img, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        elif shape == 2:
            cv2.line(img, (x, y), (x + int(rng.integers(-w // 3, w // 3)), y + int(rng.integers(-h // 3, h // 3))), colour, thick)
        else:
            pts = np.array([[x, y], [x + size, y + size // 3], [x + size // 3, y - size]], np.int32)
            cv2.polylines(img, [pts], True, colour, thick)


def _ship(rng: np.random.Generator, img: np.ndarray, cx: int, cy: int, length: int, colour) -> None:
    """A hull with a raised bow, a cabin, and masts with sails or funnels."""
    hull_h = int(length * rng.uniform(0.14, 0.22))
    half = length // 2
    bow = int(length * rng.uniform(0.08, 0.2))
    hull = np.array(
        [
            [cx - half, cy - hull_h],
            [cx + half, cy - hull_h - int(hull_h * 0.4)],
            [cx + half - bow, cy],
            [cx - half + bow // 2, cy],
        ],
        np.int32,
    )
    cv2.fillPoly(img, [hull], colour)
    cv2.line(img, (cx - half, cy - hull_h), (cx + half, cy - hull_h - int(hull_h * 0.4)), _colour(rng), 2)
    deck = cy - hull_h
    cabin_w = int(length * rng.uniform(0.15, 0.3))
    cabin_x = cx - int(length * rng.uniform(-0.15, 0.25))
    cv2.rectangle(img, (cabin_x - cabin_w // 2, deck - int(hull_h * rng.uniform(0.6, 1.2))), (cabin_x + cabin_w // 2, deck), _colour(rng), -1)
    sails = rng.random() < 0.5
    for _ in range(int(rng.integers(1, 4))):
        mx = cx + int(length * rng.uniform(-0.35, 0.3))
        mast_h = int(length * rng.uniform(0.35, 0.7))
        if sails:
            cv2.line(img, (mx, deck), (mx, deck - mast_h), (40, 40, 40), max(1, length // 80))
            tip = mx + int(mast_h * rng.uniform(0.3, 0.6)) * (1 if rng.random() < 0.5 else -1)
            sail = np.array([[mx, deck - mast_h], [mx, deck - int(mast_h * 0.15)], [tip, deck - int(mast_h * 0.15)]], np.int32)
            cv2.fillPoly(img, [sail], _colour(rng, 150))
        else:
            fw = max(3, length // 14)
            cv2.rectangle(img, (mx - fw, deck - mast_h // 2), (mx + fw, deck), _colour(rng), -1)


def _bicycle(rng: np.random.Generator, img: np.ndarray, cx: int, cy: int, length: int, colour) -> None:
    """Two spoked wheels joined by a diamond frame, with saddle and handlebar."""
    r = int(length * rng.uniform(0.2, 0.26))
    gap = int(length * rng.uniform(0.55, 0.65))
    rear, front = (cx - gap // 2, cy), (cx + gap // 2, cy)
    thick = max(1, length // 45)
    tyre = _colour(rng, 0, 90)
    for hub in (rear, front):
        cv2.circle(img, hub, r, tyre, thick + 1)
        for a in np.linspace(0, np.pi, int(rng.integers(3, 7)), endpoint=False):
            dx, dy = int(r * np.cos(a)), int(r * np.sin(a))
            cv2.line(img, (hub[0] - dx, hub[1] - dy), (hub[0] + dx, hub[1] + dy), (160, 160, 160), 1)
    crank = (cx - gap // 10, cy + r // 6)
    seat = (cx - gap // 5, cy - int(r * 1.3))
    head = (front[0] - gap // 8, cy - int(r * 1.2))
    for a, b in ((rear, crank), (rear, seat), (seat, crank), (crank, head), (seat, head), (head, front)):
        cv2.line(img, a, b, colour, thick + 1)
    cv2.line(img, (seat[0] - r // 3, seat[1] - 3), (seat[0] + r // 4, seat[1] - 3), (30, 30, 30), thick + 2)
    bar = (head[0] + r // 4, head[1] - r // 3)
    cv2.line(img, head, bar, colour, thick + 1)
    cv2.line(img, bar, (bar[0] + r // 3, bar[1] + r // 6), (30, 30, 30), thick + 1)


def render(kind: str, index: int) -> np.ndarray:
    """A BGR uint8 image of a `kind` ("ship" or "bicycle") in a random scene."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    rng = _rng(kind, index)
    w, h = int(rng.integers(200, 360)), int(rng.integers(160, 300))
    img = _background(rng, h, w)
    _clutter(rng, img, int(rng.integers(2, 9)))
    length = int(w * rng.uniform(0.4, 0.8))
    cx = int(rng.integers(length // 2, w - length // 2 + 1))
    cy = int(rng.integers(int(h * 0.45), int(h * 0.85)))
    draw = _ship if kind == "ship" else _bicycle
    draw(rng, img, cx, cy, length, _colour(rng))
    _clutter(rng, img, int(rng.integers(0, 3)))  # small occluders in front
    if rng.random() < 0.5:
        img = img[:, ::-1]
    angle = float(rng.uniform(-8, 8))
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    img = cv2.warpAffine(np.ascontiguousarray(img), matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
    img = img.astype(np.float32) * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30)
    img += rng.normal(0, rng.uniform(0, 10), img.shape)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(img: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpg" else []
    ok, data = cv2.imencode(f".{fmt}", img, params)
    if not ok:
        raise RuntimeError(f"could not encode {fmt}")
    return data.tobytes()


def placeholder(width: int = 240, height: int = 180) -> bytes:
    """A "photo unavailable" image like the ones photo hosts serve for removed photos.

    Written as an uncompressed 24-bit BMP by hand, so its bytes (and the digest listed
    in `tasks.acquire.images.PLACEHOLDERS`) do not depend on any encoder's version.
    """
    img = np.full((height, width, 3), 230, np.uint8)
    img[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = 190  # a grey "missing photo" tile
    img[height // 2 - 2 : height // 2 + 2, width // 3 : 2 * width // 3] = 120
    row = width * 3
    pad = (4 - row % 4) % 4
    pixels = b"".join(bytes(r.tobytes()) + b"\0" * pad for r in img[::-1])  # BMP rows go bottom-up
    header = b"BM" + (54 + len(pixels)).to_bytes(4, "little") + b"\0\0\0\0" + (54).to_bytes(4, "little")
    info = (40).to_bytes(4, "little") + width.to_bytes(4, "little") + height.to_bytes(4, "little")
    info += (1).to_bytes(2, "little") + (24).to_bytes(2, "little") + b"\0" * 24
    return header + info + pixels
