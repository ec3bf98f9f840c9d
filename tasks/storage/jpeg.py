"""JPEG headers read without decoding: a photo's size and colour mode from its frame header."""

from __future__ import annotations

# JPEG frame headers (SOFn): every C0-CF marker but DHT, JPG and DAC. Markers without a length: SOI, RSTn, TEM.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset([0xD8, *range(0xD0, 0xD8), 0x01])
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}  # by number of components, as Pillow names them


def frame(data: bytes) -> tuple[int, int, str, str] | None:
    """A JPEG's size and mode from its frame header, reading only the marker segments before the scan.

    Much cheaper than Pillow's reader, which parses every table in Python. None when the
    segments are not laid out as usual (Pillow then judges). With several frame headers,
    the largest counts, so no later one can hide a decompression bomb.
    """
    found, at, end = None, 2, len(data)
    while at + 4 <= end and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF or marker in _STANDALONE:  # a fill byte, or a marker without a segment
            at += 1 if marker == 0xFF else 2
            continue
        if marker == 0xDA:  # start of scan: the headers are over
            return found
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if length < 2:
            return None
        if marker in _SOF:
            if length < 8 or at + 10 > end:
                return None
            height, width = int.from_bytes(data[at + 5:at + 7], "big"), int.from_bytes(data[at + 7:at + 9], "big")
            if found is None or width * height > found[0] * found[1]:
                mode = _JPEG_MODES.get(data[at + 9], "") if data[at + 4] == 8 else ""  # 8-bit layers only, as Pillow
                found = (width, height, "JPEG", mode)
        at += 2 + length
    return None
