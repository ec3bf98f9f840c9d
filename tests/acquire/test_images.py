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

from hostile import BODIES, bomb_jpeg, photo, turned_jpeg
from tasks.acquire import images
from tasks.storage import jpeg


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # damaged EXIF, a bomb
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.width, image.height, image.mode
        except Exception:
            return None


@pytest.mark.parametrize("name", JPEGS)
def test_a_jpeg_frame_header_reads_as_pillow_reads_it(name):
    data = JPEGS[name]
    assert jpeg.frame(data) is not None  # read without Pillow
    width, height, mode = pillow(data)
    assert images._header(data) == (width, height, "JPEG", mode)


def test_a_jpeg_that_claims_too_many_pixels_is_refused_before_it_is_decoded(monkeypatch):
    monkeypatch.setattr(images.cv2, "imdecode", lambda *a: pytest.fail("a bomb was decoded"))
    assert jpeg.frame(bomb_jpeg()) == (60_000, 60_000, "JPEG", "RGB")
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
    assert jpeg.frame(junk) is None
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
    # Checked at an eighth (to be kept as it came) or in full (to be shrunk): the same verdict.
    kept, shrunk = (images.check(data, 4, 10_000_000, max_side=side).reason for side in (100_000, 1))
    assert kept == shrunk


def test_image_sizes_from_the_header_match_the_decoded_image():
    for name, data in JPEGS.items():
        if name == "turned":  # decoded upright: the EXIF orientation swaps the sides
            continue
        width, height, _, _ = images._header(data)
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape[:2] == (height, width)


@pytest.mark.parametrize("name", JPEGS)
def test_a_jpeg_kept_as_it_came_is_checked_at_an_eighth_of_its_size_and_sized_upright(name, monkeypatch):
    data = JPEGS[name]
    upright = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    flags = []
    decode = images.cv2.imdecode
    monkeypatch.setattr(images.cv2, "imdecode", lambda buffer, flag: flags.append(flag) or decode(buffer, flag))
    checked = images.check(data, 16, 10_000_000, max_side=512)
    assert checked.reason == "" and checked.size == upright
    if images._header(data)[3] == "RGB" and max(upright) <= 512:  # kept as it came: no pixels needed
        assert flags == [cv2.IMREAD_REDUCED_COLOR_8] and checked.image is None and checked.storable_as_is
    else:  # gray, CMYK or too big: decoded in full, to be converted or shrunk
        assert flags[-1] == cv2.IMREAD_COLOR and checked.image.shape[:2] == upright


def test_when_an_eighth_cannot_tell_which_way_up_a_jpeg_is_it_is_decoded_in_full():
    data = turned_jpeg(photo(13, (97, 100)))  # 13 x 13 at an eighth either way
    checked = images.check(data, 16, 10_000_000, max_side=512)
    assert checked.size == (97, 100) and checked.image.shape[:2] == (97, 100)


def test_damage_shows_at_an_eighth_of_the_size_as_in_full():
    good = BODIES["/good.jpg"]
    at = good.index(b"\xff\xc4")  # a Huffman table: garbage there is fatal to the decoder
    broken = good[:at + 5] + bytes(range(200, 216)) + good[at + 21:]
    assert cv2.imdecode(np.frombuffer(broken, np.uint8), cv2.IMREAD_REDUCED_COLOR_8) is None
    assert images.check(broken, 16, 10_000_000, max_side=512).reason == "corrupt"  # kept as it came, if good
    assert images.check(broken, 16, 10_000_000, max_side=64).reason == "corrupt"  # shrunk on store, if good
