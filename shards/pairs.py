"""``clvr shard pairs``: image-text pairs from a JSONL file.

One JSON object per line: the image path (``image``, ``path`` or ``file``; relative to the
JSONL's folder), the caption (``caption`` or ``text``, a string) or several (``captions``, a
list), and optionally a ``label``. The sample's ``.txt`` holds its captions, one per line.
A line that is not JSON or has no image is rejected (``what: line``); a pair whose image is
missing or broken, or whose captions are all empty, is rejected (``what: sample``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import Reject, ShardError
from .fileio import read_input, text_lines
from .format import TEXT_EXT
from .image_sources import class_order
from .images import prepare_image
from .job import Item, Prepared


def load_pairs(path: Path):
    """Return (items, classes, notes)."""
    path = Path(path)
    try:
        lines = text_lines(path)
    except FileNotFoundError:
        raise ShardError(f"{path}: no such file") from None
    rows, notes = [], []
    for lineno, line in lines:
        where = f"{path.name}:{lineno}"
        if line is None:
            notes.append((where, "line", "rejected", "not UTF-8 text"))
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            notes.append((where, "line", "rejected", f"invalid JSON: {e}"))
            continue
        if not isinstance(obj, dict):
            notes.append((where, "line", "rejected", "expected a JSON object"))
            continue
        image = obj.get("image") or obj.get("path") or obj.get("file")
        if not isinstance(image, str) or not image:
            notes.append((where, "line", "rejected", "no 'image' path"))
            continue
        caps = obj.get("captions", obj.get("caption", obj.get("text")))
        if isinstance(caps, str) or caps is None:
            caps = [caps or ""]
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            notes.append((where, "line", "rejected", "'captions' must be a string or a list of strings"))
            continue
        label = obj.get("label")
        if isinstance(label, float) and label.is_integer():
            label = int(label)  # 3.0 and 3 are one class
        if label is not None and not isinstance(label, (str, int)) or isinstance(label, bool):
            notes.append((where, "line", "rejected", f"'label' must be a string or an integer, not {label!r}"))
            continue
        rows.append((image, caps, None if label is None else str(label), lineno))
    if not rows:
        raise ShardError(f"{path}: lists no pairs")
    labelled = [r for r in rows if r[2] is not None]
    if labelled and len(labelled) != len(rows):
        raise ShardError(f"{path}: {len(rows) - len(labelled)} pairs have no label while others do; "
                         "label every pair or none")
    classes = class_order(r[2] for r in labelled) if labelled else None
    ids = {c: i for i, c in enumerate(classes or [])}
    items = [Item(image, ids[lab] if lab is not None else -1, extra={"captions": caps, "line": lineno})
             for image, caps, lab, lineno in rows]
    return items, classes, notes


class PreparePair:
    def __init__(self, root, options):
        self.root = str(root)
        self.options = options

    def input_path(self, item: Item) -> str:
        return os.path.join(self.root, item.src)

    def __call__(self, item: Item) -> Prepared:
        captions = [" ".join(c.split()) for c in item.extra["captions"]]
        captions = [c for c in captions if c]
        if not captions:
            raise Reject(f"empty caption (line {item.extra['line']})")
        data = read_input(self.input_path(item), f"image file (line {item.extra['line']})")
        img = prepare_image(data, self.options)
        comps = {img.ext: img.data, TEXT_EXT: "\n".join(captions).encode("utf-8")}
        meta = {"width": img.width, "height": img.height, "captions": captions, "line": item.extra["line"]}
        return Prepared(comps, meta, [("sample", "converted", n) for n in img.notes])
