"""WebDataset sets "from the wild": the layouts that real tools and datasets write, made with
``webdataset.ShardWriter`` itself, for the tests and ``bench/foreign_layouts.py``.

Each layout writes a few tars into a folder and returns what its writer meant: every sample's
key, its label (None: no label), and the colour its image is filled with (a uniform colour
per sample, so that a reader can check it got the right image for the right key). Images are
tiny (8 px). Needs ``webdataset`` and PIL (the test extras), not torch.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Written:
    keys: list[str]                       # in writing order
    labels: dict                          # key -> label as written (int, str or None)
    colours: dict                         # key -> (r, g, b)
    label_key: str | None = None          # the --label-key the layout needs (None: found by itself)

    def __len__(self) -> int:
        return len(self.keys)


def _image(colour, fmt: str) -> bytes:
    import numpy as np
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _colour(i: int) -> tuple[int, int, int]:
    return (40 + (i * 37) % 180, 40 + (i * 71) % 180, 40 + (i * 13) % 180)


def write(out: Path, rows: list[dict], maxcount: int = 7, label_key: str | None = None) -> Written:
    """Write ``rows`` ({"key", "ext": image extension, "label": value or None, "label_ext",
    "json": extra dict}) with ``webdataset.ShardWriter``."""
    import webdataset as wds
    out.mkdir(parents=True, exist_ok=True)
    written = Written([], {}, {}, label_key)
    with wds.ShardWriter(str(out / "shard-%05d.tar"), maxcount=maxcount, verbose=0) as w:
        for i, row in enumerate(rows):
            colour = _colour(i)
            ext = row.get("ext", "png")
            fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP", "tif": "TIFF",
                   "tiff": "TIFF", "gif": "GIF"}[ext.lower()]
            sample = {"__key__": row["key"], ext: _image(colour, fmt)}
            if row.get("label") is not None and row.get("label_ext", "cls") != "json":
                sample[row.get("label_ext", "cls")] = str(row["label"]).encode()
            meta = dict(row.get("json") or {})
            if row.get("label_ext") == "json" and row.get("label") is not None:
                meta[row.get("json_field", "label")] = row["label"]
            if meta:
                sample["json"] = json.dumps(meta).encode()
            if row.get("txt"):
                sample["txt"] = row["txt"].encode()
            w.write(sample)
            written.keys.append(row["key"])
            written.labels[row["key"]] = row.get("label")
            written.colours[row["key"]] = colour
    return written


def _rows(n: int, key, label=lambda i: i % 4, **extra) -> list[dict]:
    return [{"key": key(i), "label": label(i), **{k: (v(i) if callable(v) else v) for k, v in extra.items()}}
            for i in range(n)]


#: layout name -> (what it is, rows)
LAYOUTS = {
    "class folders in the key": (
        "train/n01440764/n01440764_0001", lambda: _rows(24, lambda i: f"train/n0144076{i % 4}/n0144076{i % 4}_{i:04d}",
                                                        ext="jpg")),
    "a dot in a folder name": (
        "data.v1/c3/img_0001", lambda: _rows(20, lambda i: f"data.v1/c{i % 4}/img_{i:04d}")),
    "the same file name in two class folders": (
        "c3/0007, c5/0007", lambda: _rows(20, lambda i: f"c{i % 4}/{i // 4:04d}")),
    "paths over 100 characters (PAX headers)": (
        "x" * 12 + "/.../img_0001", lambda: _rows(16, lambda i: "/".join(["a_rather_long_folder_name"] * 5)
                                                  + f"/c{i % 4}/img_{i:04d}")),
    "a space in the key": (
        "photo 00001", lambda: _rows(18, lambda i: f"my photos/photo {i:05d}")),
    "non-ASCII keys (PAX path records)": (
        "café_00001", lambda: _rows(18, lambda i: ("café" if i % 2 else "日本/写真") + f"_{i:05d}")),
    "upper-case extensions (.JPG, .JPEG, .PNG)": (
        "IMG_0001.JPG", lambda: _rows(18, lambda i: f"IMG_{i:04d}", ext=lambda i: ("JPG", "JPEG", "PNG")[i % 3])),
    "dotted basenames": (
        "train/n01440764/img.0001", lambda: _rows(20, lambda i: f"train/n0144076{i % 2}/img.{i:04d}")),
    "colons and brackets in the key": (
        "a:b/[x] (1)", lambda: _rows(12, lambda i: f"cam:{i % 3}/[shot] {i}")),
    "a few samples without .cls": (
        "8 of 40 unlabelled", lambda: _rows(40, lambda i: f"{i:09d}", label=lambda i: None if i % 5 == 2 else i % 4)),
    "labels only inside .json": (
        '{"label": 3}', lambda: _rows(20, lambda i: f"{i:09d}", label_ext="json")),
    "class names inside .json": (
        '{"class_name": "cat"}', lambda: _rows(20, lambda i: f"{i:09d}", label=lambda i: ("cat", "dog", "owl")[i % 3],
                                               label_ext="json", json_field="class_name")),
    "sparse class ids": (
        "3, 17, 42", lambda: _rows(21, lambda i: f"s{i:04d}", label=lambda i: (3, 17, 42)[i % 3])),
    ".cls2 components": (
        "KEY.cls2", lambda: _rows(16, lambda i: f"k{i:03d}", label_ext="cls2")),
    ".label components with class names": (
        "KEY.label = tench", lambda: _rows(16, lambda i: f"k{i:03d}", label_ext="label",
                                           label=lambda i: ("tench", "goldfish")[i % 2])),
    "webp, bmp and tiff images": (
        "KEY.webp / .bmp / .tif", lambda: _rows(15, lambda i: f"k{i:03d}", ext=lambda i: ("webp", "bmp", "tif")[i % 3])),
    "img2dataset (9-digit keys, .txt, .json without labels)": (
        "000000001.jpg + .txt + .json", lambda: _rows(20, lambda i: f"{i:09d}", label=lambda i: None, ext="jpg",
                                                     txt=lambda i: f"caption {i}",
                                                     json=lambda i: {"url": f"http://x/{i}.jpg", "status": "success",
                                                                     "width": 8, "height": 8})),
}


def write_layout(name: str, out: Path, maxcount: int = 7) -> Written:
    """Write the layout ``name`` of :data:`LAYOUTS` into ``out`` (img2dataset's also gets its
    ``*_stats.json`` beside the tars)."""
    rows = LAYOUTS[name][1]()
    written = write(out, rows, maxcount=maxcount)
    if name.startswith("img2dataset"):
        (out / "00000_stats.json").write_text(json.dumps({"count": len(rows), "successes": len(rows)}))
    return written
