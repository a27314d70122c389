"""``clvr shard coco``: COCO detection annotations -> images with their boxes and categories.

COCO category ids are sparse (1..90 for COCO itself); shards use contiguous ids 0..C-1 in the
order of the COCO ids, and the manifest's ``categories`` maps each to its COCO id and name.
Boxes are checked against the decoded image (not only the JSON's width/height): degenerate
boxes and boxes outside the image are rejected, boxes partly outside are clipped, each logged.
Crowd annotations (``iscrowd: 1``) stay in the JSON metadata, flagged, but are left out of the
``boxes.f32`` component unless ``--keep-crowd``: they mark regions, not objects.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict
from pathlib import Path

from .boxes import check_box, scale_box
from .errors import ShardError
from .fileio import read_input
from .format import BOXCLS_EXT, BOXES_EXT, encode_boxes
from .images import prepare_image
from .job import Item, Prepared


def load_coco(instances: Path):
    """Return (items, categories, notes) from a COCO instances JSON."""
    instances = Path(instances)
    try:
        data = json.loads(instances.read_text())
    except FileNotFoundError:
        raise ShardError(f"{instances}: no such file") from None
    except ValueError as e:
        raise ShardError(f"{instances}: not valid JSON ({e})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ShardError(f"{instances}: no '{key}' list; is this a COCO instances file?")
    cats = sorted(data["categories"], key=lambda c: c["id"])
    contiguous = {c["id"]: i for i, c in enumerate(cats)}
    categories = [{"id": i, "coco_id": c["id"], "name": c.get("name", str(c["id"]))}
                  for i, c in enumerate(cats)]
    images = {}
    notes = []
    for im in data["images"]:
        if "id" not in im or "file_name" not in im:
            notes.append((str(im)[:80], "sample", "rejected", "image entry without 'id' or 'file_name'"))
            continue
        images[im["id"]] = im
    anns = defaultdict(list)
    for a in data["annotations"]:
        if a.get("image_id") not in images:
            notes.append((f"annotation {a.get('id')}", "box", "rejected",
                          f"refers to unknown image_id {a.get('image_id')!r}"))
            continue
        if a.get("category_id") not in contiguous:
            notes.append((images[a["image_id"]]["file_name"], "box", "rejected",
                          f"annotation {a.get('id')}: unknown category_id {a.get('category_id')!r}"))
            continue
        anns[a["image_id"]].append({"id": a.get("id"), "bbox": a.get("bbox"),
                                    "category": contiguous[a["category_id"]],
                                    "coco_category_id": a["category_id"],
                                    "iscrowd": int(a.get("iscrowd", 0))})
    items = []
    for image_id in sorted(images, key=lambda k: (str(type(k)), k)):
        im = images[image_id]
        items.append(Item(im["file_name"], extra={
            "image_id": image_id,
            "anns": sorted(anns[image_id], key=lambda a: (a["id"] is None, a["id"] or 0))}))
    return items, categories, notes


class PrepareCocoImage:
    def __init__(self, images_dir, options, keep_crowd: bool = False):
        self.images_dir = str(images_dir)
        # COCO boxes refer to the stored pixel grid, so an EXIF rotation is reset, not applied.
        self.options = dataclasses.replace(options, orientation="reset")
        self.keep_crowd = keep_crowd

    def input_path(self, item: Item) -> str:
        return os.path.join(self.images_dir, item.src)

    def __call__(self, item: Item) -> Prepared:
        data = read_input(self.input_path(item), "image file")
        img = prepare_image(data, self.options)
        notes = [("sample", "converted", n) for n in img.notes]
        sx, sy = img.scale
        sw, sh = img.source_size
        kept, meta_boxes = [], []
        for a in item.extra["anns"]:
            where = f"annotation {a['id']}"
            clipped, note = check_box(a["bbox"], sw, sh)
            if clipped is None:
                notes.append(("box", "rejected", f"{where}: {note}"))
                continue
            if note:
                notes.append(("box", "converted", f"{where}: {note}"))
            box = [round(v, 3) for v in scale_box(clipped, sx, sy)]
            entry = {"bbox": box, "category": a["category"], "coco_category_id": a["coco_category_id"],
                     "ann_id": a["id"], "iscrowd": a["iscrowd"]}
            meta_boxes.append(entry)
            if self.keep_crowd or not a["iscrowd"]:
                kept.append(entry)
        comps = {img.ext: img.data}
        comps[BOXES_EXT], comps[BOXCLS_EXT] = encode_boxes(kept)
        meta = {"width": img.width, "height": img.height, "image_id": item.extra["image_id"],
                "boxes": meta_boxes, "box_source": "coco"}
        return Prepared(comps, meta, notes)
