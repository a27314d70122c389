"""EXIF orientation of JPEGs, read and reset without decoding the image.

Decoders disagree about the EXIF orientation tag: DALI's decoder applies it by default, PIL
and webdataset's ``.decode()`` do not. A shard must mean the same pixels to every reader, so
``clvr shard`` never stores an image whose orientation tag says anything but "upright": it
either applies the rotation (images) or resets the tag to 1 in place (COCO, whose boxes refer
to the stored pixel grid). This module finds the tag in a JPEG's APP1 segment.
"""

from __future__ import annotations

import struct

ORIENTATION_TAG = 0x0112
_WIDTH = {3: 2, 4: 4}  # TIFF types SHORT and LONG: bytes of the value
SOS, EOI, APP1 = 0xDA, 0xD9, 0xE1


def _tiff_orientation(tiff: bytes) -> tuple[int, int | None]:
    """(orientation, offset of its 2-byte value inside ``tiff``) from a TIFF/EXIF block, whose
    first two bytes give the byte order (``II`` little-endian, ``MM`` big-endian)."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1, None
    end = "<" if tiff[:2] == b"II" else ">"
    ifd = struct.unpack(end + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return 1, None
    count = struct.unpack(end + "H", tiff[ifd:ifd + 2])[0]
    for k in range(count):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(tiff):
            break
        tag, typ = struct.unpack(end + "HH", tiff[entry:entry + 4])
        if tag == ORIENTATION_TAG and typ in _WIDTH:  # SHORT per the standard; LONG seen in the wild
            code = end + ("H" if typ == 3 else "I")
            value = struct.unpack(code, tiff[entry + 8:entry + 8 + _WIDTH[typ]])[0]
            return (value if 1 <= value <= 8 else 1), entry + 8
    return 1, None


def jpeg_orientation(data: bytes) -> tuple[int, int | None]:
    """(EXIF orientation 1..8, absolute offset of its value in ``data`` or None)."""
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return 1, None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (SOS, EOI):
            return 1, None
        length = (data[i + 2] << 8) | data[i + 3]
        if marker == APP1 and data[i + 4:i + 10] == b"Exif\0\0":
            start = i + 10
            orientation, offset = _tiff_orientation(data[start:i + 2 + length])
            return orientation, (None if offset is None else start + offset)
        i += 2 + length
    return 1, None


def reset_jpeg_orientation(data: bytes) -> bytes:
    """The same JPEG with its EXIF orientation set to 1 (upright); pixels untouched."""
    orientation, offset = jpeg_orientation(data)
    if orientation == 1 or offset is None:
        return data
    tiff = data.rfind(b"Exif\0\0", 0, offset) + 6
    end = "<" if data[tiff:tiff + 2] == b"II" else ">"
    typ = struct.unpack(end + "H", data[offset - 6:offset - 4])[0]  # the entry's type field
    one = struct.pack(end + ("H" if typ == 3 else "I"), 1)
    return data[:offset] + one + data[offset + len(one):]
