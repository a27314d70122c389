"""The clvr sample format: what one sample in a shard holds, and how each part is encoded.

Every member of a shard is named ``KEY.EXT``. KEY is the sample's global index written as
nine digits (no dots), EXT is everything after the first dot (the rule DALI's and
webdataset's readers both use). The components:

=============  ==========================================  ==================================
component      content                                     read by
=============  ==========================================  ==================================
``index.i64``  global sample index 0..N-1, int64 LE         DALI ``dtypes=INT64``; memory banks
``label.i64``  class id, int64 LE; -1 when unlabelled       DALI ``dtypes=INT64``
``cls``        class id as ASCII decimal (-1 unlabelled)   webdataset ``.decode()`` -> int
``jpg|png|webp`` the image, 8-bit RGB                      DALI ``decoders.image``
``webm|mkv|mp4|avi`` the video                             DALI ``experimental.decoders.video``
``boxes.f32``  K x 4 float32 LE, COCO ``[x, y, w, h]`` px  DALI ``dtypes=FLOAT`` (reshape K,4)
``boxcls.i64`` K int64 LE box categories (-1: proposal)    DALI ``dtypes=INT64``
``txt``        caption(s), UTF-8, one per line             webdataset ``.decode()``; DALI bytes
``json``       metadata: source, size, boxes, video probe  Python
=============  ==========================================  ==================================

The full description, with examples, is ``docs/sample-format.md``.
"""

from __future__ import annotations

import json
import struct

FORMAT_NAME = "clvr-shards"
FORMAT_VERSION = 1

KEY_DIGITS = 9
INDEX_EXT = "index.i64"
LABEL_EXT = "label.i64"
CLS_EXT = "cls"
BOXES_EXT = "boxes.f32"
BOXCLS_EXT = "boxcls.i64"
TEXT_EXT = "txt"
META_EXT = "json"

IMAGE_EXTS = ("jpg", "png", "webp")
#: every image extension the pipeline reads (DALI decodes them on the CPU and the GPU), in sets that
#: clvr did not write; matched without regard to case (``.JPG``). GIF is not among them: DALI cannot
#: decode it.
READ_IMAGE_EXTS = (*IMAGE_EXTS, "jpeg", "bmp", "tif", "tiff", "jp2", "ppm", "pgm", "pbm", "pnm")
VIDEO_EXTS = ("webm", "mkv", "mp4", "avi")
UNLABELLED = -1
PROPOSAL_CATEGORY = -1

# Order of components inside a sample: fixed, so shards are byte-identical run to run.
COMPONENT_ORDER = (
    *IMAGE_EXTS, *VIDEO_EXTS, INDEX_EXT, LABEL_EXT, CLS_EXT, BOXES_EXT, BOXCLS_EXT, TEXT_EXT, META_EXT,
)


def sample_key(index: int) -> str:
    return f"{index:0{KEY_DIGITS}d}"


def encode_int64(value: int) -> bytes:
    return struct.pack("<q", int(value))


def decode_int64(data: bytes) -> int:
    if len(data) != 8:
        raise ValueError(f"expected 8 bytes of int64, got {len(data)}")
    return struct.unpack("<q", data)[0]


def encode_boxes(boxes) -> tuple[bytes, bytes]:
    """``boxes``: list of dicts with ``bbox`` [x, y, w, h] and ``category`` -> (boxes.f32, boxcls.i64)."""
    coords = b"".join(struct.pack("<4f", *map(float, b["bbox"])) for b in boxes)
    cats = b"".join(struct.pack("<q", int(b["category"])) for b in boxes)
    return coords, cats


def decode_boxes(coords: bytes, cats: bytes) -> list[tuple[list[float], int]]:
    if len(coords) % 16 or len(cats) % 8 or len(coords) // 16 != len(cats) // 8:
        raise ValueError(f"boxes.f32 ({len(coords)} B) and boxcls.i64 ({len(cats)} B) disagree")
    n = len(cats) // 8
    xs = struct.unpack(f"<{4 * n}f", coords)
    cs = struct.unpack(f"<{n}q", cats)
    return [(list(xs[4 * i: 4 * i + 4]), cs[i]) for i in range(n)]


def json_bytes(obj, indent: int | None = None) -> bytes:
    """UTF-8 JSON with sorted keys. File names that are not valid UTF-8 reach Python as lone
    surrogates; they are written as ``\\udcXX`` escapes, which read back to the same name."""
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(obj, sort_keys=True, separators=separators, indent=indent, ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace")


def encode_json(obj) -> bytes:
    return json_bytes(obj)


def split_member_name(name: str) -> tuple[str, str]:
    """``000000012.label.i64`` -> (``000000012``, ``label.i64``): the rule of DALI's and webdataset's readers."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


def ordered_components(components: dict[str, bytes]) -> list[tuple[str, bytes]]:
    order = {ext: i for i, ext in enumerate(COMPONENT_ORDER)}
    return sorted(components.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
