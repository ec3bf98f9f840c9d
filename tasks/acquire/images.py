"""Is this body an image worth keeping? Decode it, check it, make it 8-bit RGB.

Content types lie, so images are judged by decoding them with OpenCV. The header
is read first (Pillow reads only the header) so that a small file that claims
enormous dimensions, a decompression bomb, is refused before it is decoded.
Grayscale, CMYK, alpha and 16-bit images are converted to 8-bit colour and kept.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from tasks.storage import files
from tasks.storage.jpeg import frame as jpeg_frame

# Leading bytes of the formats OpenCV decodes: a body that starts like an image
# but does not decode is `corrupt`, anything else is `not_image`.
IMAGE_MAGIC = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")

# Known "photo unavailable" placeholders, by SHA-256 of the served bytes. Dead
# photo-hosting links often answer 200 with such an image instead of a 404, so it
# decodes fine and would otherwise be kept as a photo of the class. Add the real
# hosts' digests here, e.g. Flickr's "This photo is no longer available" images
# (photo_unavailable.png and its size variants, served for removed photos on
# *.staticflickr.com) and the equivalents of other hosts in the URL lists; more can
# be listed in params without a code change (`download.placeholder_digests`).
PLACEHOLDERS = {
    # The embedded demo source's placeholder (tasks.acquire.demo_images.placeholder()).
    "56f1debf9b4cf976673491a6886e4acaeeb4aaa17f2b70153f98f26d32cb5a5d": "demo: photo unavailable",
}


@dataclass
class Checked:
    """What validation found: a good image (reason "") or the reason it is not one."""

    image: np.ndarray | None  # decoded, 8-bit BGR; None if bad, or if it will be stored as it came anyway
    reason: str = ""
    sha256: str = ""
    # The body can be stored as it came: a JPEG or PNG already in 8-bit RGB.
    storable_as_is: bool = False
    size: tuple[int, int] = (0, 0)  # (height, width), upright as later steps read it


def _header(data: bytes) -> tuple[int, int, str, str] | None:
    """(width, height, format, mode) from the header alone, or None when Pillow cannot tell."""
    jpeg = data[:2] == b"\xff\xd8"
    if jpeg and (frame := jpeg_frame(data)):
        return frame
    try:
        with warnings.catch_warnings():  # about bombs and damaged EXIF: judged here, not worth a log line
            warnings.simplefilter("ignore")
            if jpeg:  # straight to Pillow's JPEG reader, skipping format detection
                with JpegImagePlugin.JpegImageFile(io.BytesIO(data)) as header:
                    return header.width, header.height, "JPEG", header.mode
            with Image.open(io.BytesIO(data)) as header:
                return header.width, header.height, header.format or "", header.mode
    except Image.DecompressionBombError:
        return 1 << 31, 1 << 31, "", ""
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, IndexError, TypeError, struct.error):
        return None  # what Image.open turns into UnidentifiedImageError, and what it lets through


def looks_truncated(data: bytes) -> bool:
    """Decoders fill a cut-off JPEG with grey and call it a success: check the end markers."""
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in data[-64:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-16:]
    return False


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any decoded image as 8-bit, 3-channel BGR: depth scaled, gray expanded, alpha over white."""
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.integer):
            image = image.astype(np.float32) * (255.0 / np.iinfo(image.dtype).max)
        else:
            image = np.clip(image, 0, 1) * 255.0
        image = np.rint(image).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        alpha = image[:, :, 3:].astype(np.float32) / 255.0
        blended = image[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.rint(blended).astype(np.uint8)
    return image


def _upright(width: int, height: int, eighth: tuple[int, int]) -> tuple[int, int] | None:
    """(height, width) of a JPEG decoded at an eighth of its size, upright: the frame header's
    sides, swapped if the EXIF orientation turned it. None when the eighth cannot tell."""
    as_stored, turned = (-(-height // 8), -(-width // 8)), (-(-width // 8), -(-height // 8))
    if as_stored == turned and width != height:
        return None
    return (height, width) if eighth == as_stored else (width, height) if eighth == turned else None


def check(data: bytes, min_side: int, max_pixels: int, placeholders: frozenset[str] | set[str] = frozenset(),
          max_side: int | None = None) -> Checked:
    """Decode and check a body; the reason codes are the manifest's. `max_side`: the store's (see for_store)."""
    if not data:
        return Checked(None, "empty")
    digest = files.sha256_bytes(data)
    if digest in PLACEHOLDERS or digest in placeholders:
        return Checked(None, "placeholder", digest)
    header = _header(data)
    if header is not None and header[0] * header[1] > max_pixels:
        return Checked(None, "decompression_bomb", digest)
    if looks_truncated(data):
        return Checked(None, "truncated", digest)
    buffer, jpeg = np.frombuffer(data, np.uint8), data[:2] == b"\xff\xd8"
    if jpeg and header is not None and header[3] == "RGB" and max(header[:2]) <= (max_side or 1 << 31):
        # To be stored as it came, its pixels are not needed: decoded at an eighth of its size,
        # libjpeg still reads every coefficient (so damage shows as at full size) in 60% of the time.
        eighth = cv2.imdecode(buffer, cv2.IMREAD_REDUCED_COLOR_8)
        # Not decodable at an eighth (damaged, or a kind libjpeg cannot scale), or unclear
        # which way up: the full decode below judges it.
        if eighth is not None and eighth.size and (size := _upright(header[0], header[1], eighth.shape[:2])):
            if min(size) < min_side:
                return Checked(None, "too_small", digest)
            return Checked(None, "", digest, storable_as_is=True, size=size)
    # A JPEG has no alpha and no 16 bits to keep: decoded as colour, it comes upright
    # by its EXIF orientation, as later steps read a JPEG stored as it came (the
    # unchanged mode ignores the tag, so a resized photo would be stored on its side).
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR if jpeg else cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        return Checked(None, "corrupt" if data.startswith(IMAGE_MAGIC) else "not_image", digest)
    if image.shape[0] * image.shape[1] > max_pixels:  # a format Pillow could not read the header of
        return Checked(None, "decompression_bomb", digest)
    if min(image.shape[:2]) < min_side:
        return Checked(None, "too_small", digest)
    as_is = header is not None and header[2] in ("JPEG", "PNG") and header[3] == "RGB" and image.dtype == np.uint8
    return Checked(to_bgr8(image), "", digest, storable_as_is=as_is, size=image.shape[:2])


def extension(data: bytes) -> str:
    """The file extension of an image that can be kept as it came (a JPEG or a PNG)."""
    return "png" if data[:4] == b"\x89PNG" else "jpg"


def for_store(data: bytes, checked: Checked, max_side: int | None) -> tuple[bytes, str, tuple[int, int]]:
    """(bytes, extension, (height, width)) to store: the body as it came when possible, else re-encoded."""
    image, (h, w) = checked.image, checked.size
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    elif checked.storable_as_is:
        return data, extension(data), (h, w)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError("OpenCV could not encode a decoded image")
    return encoded.tobytes(), "jpg", image.shape[:2]
