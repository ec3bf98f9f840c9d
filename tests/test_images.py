"""Validation's header reading: a JPEG's frame header read without Pillow must say what Pillow says."""

from __future__ import annotations

import io
import struct
import warnings

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from hostile import BODIES, bomb_jpeg, photo
from tasks import images


def progressive_jpeg() -> bytes:
    return cv2.imencode(".jpg", photo(20, (70, 50)), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()


def padded_jpeg() -> bytes:
    """Fill bytes before a marker and a restart marker among the headers: legal, if unusual."""
    body = BODIES["/good.jpg"]
    at = body.index(b"\xff\xc0")
    return body[:at] + b"\xff\xff\xff\xd0" + body[at:]


JPEGS = {name: BODIES[f"/{name}.jpg"] for name in ("good", "gray", "cmyk", "turned", "big")}
JPEGS |= {"progressive": progressive_jpeg(), "padded": padded_jpeg()}


def pillow(data: bytes) -> tuple[int, int, str] | None:
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as image:
            warnings.simplefilter("ignore")  # damaged EXIF, a bomb
            return image.width, image.height, image.mode
    except Exception:
        return None


@pytest.mark.parametrize("name", JPEGS)
def test_a_jpeg_frame_header_reads_as_pillow_reads_it(name):
    data = JPEGS[name]
    assert images._jpeg_frame(data) is not None  # read without Pillow
    width, height, mode = pillow(data)
    assert images._header(data) == (width, height, "JPEG", mode)


def test_a_jpeg_that_claims_too_many_pixels_is_refused_before_it_is_decoded(monkeypatch):
    monkeypatch.setattr(images.cv2, "imdecode", lambda *a: pytest.fail("a bomb was decoded"))
    assert images._jpeg_frame(bomb_jpeg()) == (60_000, 60_000, "JPEG", "RGB")
    assert images.check(bomb_jpeg(), 16, 10_000_000).reason == "decompression_bomb"


def test_a_second_frame_header_cannot_hide_a_bomb_behind_a_small_one():
    bomb = bomb_jpeg()
    at = bomb.index(b"\xff\xc0")
    length = struct.unpack(">H", bomb[at + 2:at + 4])[0]
    frame = bomb[at:at + 2 + length]
    small = frame[:5] + struct.pack(">HH", 8, 8) + frame[9:]
    for first, second in ((frame, small), (small, frame)):
        body = bomb[:at] + first + second + bomb[at + 2 + length:]
        assert images.check(body, 4, 10_000_000).reason == "decompression_bomb"


def test_segments_out_of_the_usual_layout_are_left_to_pillow():
    good = BODIES["/good.jpg"]
    at = good.index(b"\xff\xdb")
    junk = good[:at] + b"junk" + good[at:]  # Pillow skips stray bytes between segments
    assert images._jpeg_frame(junk) is None
    assert images._header(junk)[:2] == pillow(good)[:2]


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(sorted(JPEGS)), cut=st.integers(0, 700),
       flips=st.lists(st.tuples(st.integers(0, 700), st.integers(0, 255)), max_size=4))
def test_damaged_jpeg_headers_never_raise_and_never_claim_fewer_pixels_than_pillow(name, cut, flips):
    data = bytearray(JPEGS[name][: max(2, len(JPEGS[name]) - cut)])
    for at, value in flips:
        if at < len(data):
            data[at] = value
    data = bytes(data)
    header = images._header(data)
    seen = pillow(data)
    if header is not None and seen is not None:
        assert header[0] * header[1] >= seen[0] * seen[1]
    if seen is not None and seen[0] * seen[1] > 10_000_000:
        assert images.check(data, 4, 10_000_000).reason == "decompression_bomb"


def test_image_sizes_from_the_header_match_the_decoded_image():
    for name, data in JPEGS.items():
        if name == "turned":  # decoded upright: the EXIF orientation swaps the sides
            continue
        width, height, _, _ = images._header(data)
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape[:2] == (height, width)
