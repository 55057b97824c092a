"""Decoding image files with truncation and corruption detected, not papered over.

OpenCV's ``imread`` decodes a JPEG cut at half its bytes into an image whose lower half is grey, and only
libjpeg's "Premature end of JPEG file" on stderr says so. :func:`read_image` reads the bytes once and refuses:

* an empty file;
* a JPEG whose data does not end with the EOI marker (``FF D9``), a PNG whose last chunk is not ``IEND``;
* anything the decoder cannot decode.

A JPEG/PNG without its end marker may still be complete (a camera that appends bytes after EOI): such a file is
then decoded a second time by Pillow, which raises on truncated data, and accepted if Pillow reads it whole.
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np

__all__ = ["ImageDecodeError", "read_image", "end_marker_missing"]

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"
_TAIL = 64  # bytes at the end searched for the end marker (some writers pad with zeros or newlines)


class ImageDecodeError(ValueError):
    """An image file is empty, truncated or cannot be decoded; the message says which (without the path)."""


def end_marker_missing(data: bytes) -> str | None:
    """For JPEG and PNG bytes: why the data looks truncated (no end marker near the end), else None."""
    tail = data[-_TAIL:].rstrip(b"\x00\r\n\t ")
    if data.startswith(_JPEG_SOI) and not tail.endswith(_JPEG_EOI):
        return "truncated JPEG (the data ends before the end-of-image marker FF D9)"
    if data.startswith(_PNG_SIG) and not tail.endswith(_PNG_IEND):
        return "truncated PNG (the last chunk is not IEND)"
    return None


def _pillow_reads_whole(data: bytes) -> bool:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # raises OSError "image file is truncated" (Pillow's LOAD_TRUNCATED_IMAGES is False)
        return True
    except Exception:  # noqa: BLE001 - any failure means: not a whole image
        return False


def read_image(path: str | Path, flags: int = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) -> np.ndarray:
    """The image at ``path`` as OpenCV decodes it (BGR uint8 for the default flags).

    Raises FileNotFoundError for a missing file and :class:`ImageDecodeError` for an empty, truncated or
    undecodable one.
    """
    data = Path(path).read_bytes()
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    truncated = end_marker_missing(data)
    if truncated is not None and not _pillow_reads_whole(data):
        raise ImageDecodeError(truncated)
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if img is None:
        raise ImageDecodeError("cannot be decoded (not an image, or a corrupt one)")
    return img
